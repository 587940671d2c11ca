"""Pieces every CLIP prompt-learning method shares (STYLE.md §3), each written once.

- ``clip_loading``: ``load_clip_to_cpu``, backbone names/paths, the fp16/fp32/amp casts.
- ``text_encoder``: ``TextEncoder`` (prompt embeddings -> text features, cropped at the last EOT).
- ``prompt_learner``: ``PromptLearnerBase`` (context init, class-name buffers, end/middle/front layouts).
- ``prompt_clip``: ``PromptCLIP`` (CoOp's CustomCLIP), ``cosine_logits``, ``l2_normalize``.
- ``text_features``: ``class_text_features`` for frozen, hand-written prompts (zero-shot heads).
- ``prompt_trainer``: ``ClipPromptTrainer`` (precision, freezing, registration, the step, strict loading,
  evaluation from cached image features).
- ``feature_cache``: ``FeatureCache``, the on-disk store of frozen image features shared across runs.
- ``lora_trainer``: the LoRA model/trainer base shared by CLIP-LoRA and DISEF (LoRA itself: ``clip/lora.py``).
- ``disef_generation``: DISEF's caption → img2img → CLIP-filter pipeline (sharded, resumable).
- ``discrete_prompt``: DPT's vocabulary scores, token selection and straight-through estimator.
- ``sgld``: the SGLD optimizer, sample bank and votes of LangevinCoOp.
- ``multilabel_losses``: BCE, focal, ASL, distribution-balanced and class-specific embedding losses.
"""
