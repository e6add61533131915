"""Engine-neutral DeepSeek-V3.2 math: the reference model (oracle) and helpers the engine adapters share."""
from .cache import CacheFullError, PagedCache, Sequence  # noqa: F401
from .indexer import indexer_head_weights, indexer_rope_qk  # noqa: F401
from .mla import absorb_query, expand_latent_output, split_kv_b  # noqa: F401
from .moe import route  # noqa: F401
from .reference import ReferenceModel, rms_norm  # noqa: F401
from .rope import YarnRope, yarn_inv_freq  # noqa: F401
