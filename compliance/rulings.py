"""The rulings each rule rests on, cited as in COMPLIANCE.md (issue numbers, field-guide conditions C1-C4).

Field guide = issue #1017 (the community's four conditions, used by reviewers as the spec):
C1 causality, C2 normalisation, C3 score before update, C4 single pass.
"""

RULINGS = {
    "TTT-PRE": "Issue #402 (adapting on validation tokens before scoring them is training on the validation set); "
               "issue #677 megathread and the 2026-03-27 closures (pre-quant / pre-eval TTT); field guide #1017 "
               "C3 (no state learned from a token may score that token). Legal form: score-first chunked TTT.",
    "RESCORE": "Issue #677 (multi-epoch or two-pass scoring: only the first score of a token counts); field guide "
               "#1017 C4 (single left-to-right pass) and C3.",
    "NGRAM-TARGET": "2026-03-27 closures of hashed n-gram caches (target token hashed into the lookup key, "
                    "PR #779 family); field guide #1017 C1 (p(t) depends only on the artifact and tokens < t) and "
                    "C2 (a full distribution over the vocabulary that sums to 1).",
    "SLOT": "Field guide #1017 C1 and C3 (a per-window delta / logit bias optimised on the targets it then scores "
            "uses those targets); issue #677. Context-only variants are an open question (COMPLIANCE.md): "
            "needs a ruling.",
    "VAL-TRAIN": "Challenge README FAQ and CHALLENGE.md limits: no validation data during training, no val tokens "
                 "stored in the artifact ('paid prefix'); field guide #1017 C1; issue #677.",
    "CALIB-VAL": "Challenge README FAQ (CHALLENGE.md limits): GPTQ/quantisation calibration data must not be "
                 "validation data, and calibration time counts inside the 600 s training budget; issue #677.",
    "BYTES": "Challenge README scoring rule (CHALLENGE.md 'Scoring'): bytes per target from the tokenizer, '▁' "
             "counted once and only after a non-boundary token, byte-fallback <0xNN> pieces exactly 1 byte; "
             "field guide #1017 C2.",
    "LIMITS": "Challenge README limits (CHALLENGE.md): training <= 600 s and evaluation <= 600 s (all phases) on "
              "8xH100, artifact = code bytes of the submitted train_gpt.py + compressed model <= 16,000,000 "
              "bytes, no network access at evaluation.",
    "STATS": "Challenge README: a new record must beat the standing one by >= 0.005 nats at p < 0.01 (one-sided "
             "Welch t-test over per-seed losses); a warning, not a failure.",
}

TITLES = {
    "TTT-PRE": "adapting on validation tokens before scoring them",
    "RESCORE": "scoring validation tokens more than once / statistics over the whole val set",
    "NGRAM-TARGET": "the target token used to form its own probability",
    "SLOT": "per-window delta / logit bias optimised on the scored targets",
    "VAL-TRAIN": "validation data in training or in the artifact",
    "CALIB-VAL": "calibration on validation data or after the training budget",
    "BYTES": "wrong byte accounting in val_bpb",
    "LIMITS": "time, size, code-bytes and network limits",
    "STATS": "record significance",
}
