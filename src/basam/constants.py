"""Names and limits shared across basam, in a module that imports nothing (no torch)."""

#: the model the command line uses when ``--model`` is not given
DEFAULT_MODEL = "mobile_sam"

#: the smallest working resolution (longest side, px): below it SAM's 16 px patches leave < 4 tokens a side
MIN_RESOLUTION = 64

#: how HQ-SAM's HQ-Output token is used (``docs/method.md``): alone, added to SAM's mask, or fused by product
HQ_FUSIONS = ("independent", "add", "product")

#: ``basam bench``: the dtypes it can time (names; torch dtypes in basam.bench) and the parts it times
BENCH_DTYPES = ("fp32", "bf16", "fp16")
BENCH_PARTS = ("encoder", "predictor", "amg")
