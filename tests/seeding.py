"""Per-test seeds (see conftest.py): a test's seed is a hash of its pytest node id offset by DSV32_TEST_SEED.
A module of its own so module-scoped fixtures can import it (`from conftest import ...` would find whichever
conftest module was imported first, e.g. tests/cuda/conftest.py)."""
import hashlib
import os


def seed_for(nodeid: str) -> int:
    """The seed of one test (or module): a hash of its node id, offset by DSV32_TEST_SEED (default 0), so the
    same commit draws the same inputs in every run, in any order and under any xdist split; a seed sweep sets
    DSV32_TEST_SEED to other values."""
    base = int(os.environ.get("DSV32_TEST_SEED", "0"))
    return (int.from_bytes(hashlib.sha256(nodeid.encode()).digest()[:4], "little") + base) % (1 << 30)
