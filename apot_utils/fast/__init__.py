"""The fast path: decision-threshold projection and the fused training quantizer (:mod:`.projection`), the
kernel bodies (:mod:`.kernels`) and their ahead-of-time build and load (:mod:`.aot`). Tested equal, bit for
bit, to :mod:`apot_utils.core.reference`."""
