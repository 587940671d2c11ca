"""Pieces that two or more CLIP methods share, each written once (CoOp and CoCoOp repeat them in each file).

- ``clip_loading``: ``load_clip_to_cpu``, backbone names/paths, the fp16/fp32/amp casts.
- ``text_encoder``: ``TextEncoder`` (prompt embeddings -> text features, cropped at the last EOT).
- ``prompt_learner``: ``PromptLearnerBase`` (context init, class-name buffers, end/middle/front layouts).
- ``custom_clip``: ``CustomCLIP``, the base of every method's model, with ``cosine_logits`` and ``l2_normalize``.
- ``prompt_clip``: ``PromptCLIP``, CoOp's model (text features from a prompt learner).
- ``text_features``: ``class_text_features`` for frozen, hand-written prompts (zero-shot heads).
- ``templates``: ``IMAGENET_TEMPLATES``, ``IMAGENET_TEMPLATES_SELECT``, ``dataset_template(name)`` and
  ``dataset_templates(name)``.
- ``prompt_trainer``: ``ClipPromptTrainer`` (precision, freezing, registration, the step, strict loading,
  evaluation from cached image features).
- ``feature_cache``: ``FeatureCache``, the on-disk store of frozen image features shared across runs.
- ``frozen_features``: ``FrozenFeatureTrainer``, cached features of any split and a fit in the first epoch
  (the linear probe and Tip-Adapter).
- ``lora_trainer``: the LoRA model/trainer base shared by CLIP-LoRA and DISEF (LoRA itself: ``clip/lora.py``).
"""
