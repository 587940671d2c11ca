"""Pieces every CLIP prompt-learning method shares (STYLE.md §3), each written once.

- ``clip_loading``: ``load_clip_to_cpu``, backbone names/paths, the fp16/fp32/amp casts.
- ``text_encoder``: ``TextEncoder`` (prompt embeddings -> text features, cropped at the last EOT).
- ``prompt_learner``: ``PromptLearnerBase`` (context init, class-name buffers, end/middle/front layouts).
- ``prompt_clip``: ``PromptCLIP`` (CoOp's CustomCLIP), ``cosine_logits``, ``l2_normalize``.
- ``text_features``: ``class_text_features`` for frozen, hand-written prompts (zero-shot heads).
- ``prompt_trainer``: ``ClipPromptTrainer`` (precision, freezing, registration, the step, strict loading).
"""
