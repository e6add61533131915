"""The torch CPU versions of sgl_kernel's EAGLE ops (engines/sglang/cpu_spec_ops.py) vs SGLang's Triton kernels.

Oracle. Each op is compared, output buffer by output buffer and bit for bit, with the Triton kernel that SGLang
0.5.23 runs for the same op on a GPU, executed here by Triton's CPU interpreter:
  op (ours)                               kernel (SGLang; paths under site-packages/sglang/)
  assign_req_to_token_pool_cpu            srt/mem_cache/allocation.py: assign_req_to_token_pool
  assign_extend_cache_locs_cpu            kernels/ops/speculative/cache_locs.py: assign_extend_cache_locs
  assign_draft_cache_locs_contiguous_cpu  cache_locs.py: assign_draft_cache_locs_contiguous
  fill_bonus_tokens_cpu                   kernels/ops/speculative/eagle.py: fill_bonus_tokens
  fill_accept_out_cache_loc_cpu           eagle.py: fill_accept_out_cache_loc
  build_tree_kernel_efficient_cpu         kernels/ops/speculative/spec_tree.py: sgl_build_tree_kernel_efficient_triton
                                          (via its host launcher sgl_build_tree_kernel_triton; mask modes 0, 1)
  verify_tree_greedy_cpu                  spec_tree.py: verify_tree_greedy_kernel_triton (via verify_tree_greedy_triton)
Every kernel runs under the interpreter here, so no plain-loop stand-in oracle was needed.

Interpreter. The Triton side runs in a child Python (same venv, same environment plus TRITON_INTERPRET=1),
which imports SGLang's kernel modules and serves launches over a pipe (module fixture, started once). In-process
is not robust: TRITON_INTERPRET is read when ``@triton.jit`` decorates, and that includes triton.language's own
jit'd helpers (tl.sum, ...), decorated when ``triton`` is first imported; in a pytest session the other SGLang
test modules import SGLang (hence triton) at collection, before any fixture here could set it, and setting it
in the session's environment would also turn every SGLang kernel interpreted for the engine tests that follow.
The launch arguments are those of the GPU branch of SGLang's ``*_func`` wrappers; for the two tree kernels
SGLang's own host launchers (sgl_build_tree_kernel_triton, verify_tree_greedy_triton) are called.

Two torch paths are checked against the kernel: our op (the installed deepseek_v32_plugin) called here directly
with the argument order of SGLang's call sites, and, when SGLang's CPU branch is active (SGLANG_USE_CPU_ENGINE=1
and sgl_kernel is the cpu_shims stand-in, as in this venv), SGLang's own ``*_func`` wrapper run in the child,
which reaches our op through ``sgl_kernel`` with SGLang's real positional/keyword arguments.

Inputs are fresh random per run (seed printed; DSV32_SPEC_OPS_SEED=<seed> reproduces), never zeros: output
buffers start as random garbage, identical on both sides, so a write to a cell the kernel leaves alone (or a
missed write) is caught. EAGLE trees are built the way SGLang's draft loop builds them (select_top_k_tokens ->
organize_draft_results): per-step top-k probabilities and tokens, cumulative scores, the top
(draft_token_num - 1) scores, sorted, as selected_index, and the concatenated per-step parent ids as
parent_list; topk=1 gives the chain SGLang's preallocated topk1 buffers hold. One "orphan" variant uses scores
that grow with depth (impossible with real probabilities), so selected nodes can lack their selected parent.
Verification targets follow a random tree path with probability 3/4 per node, so acceptance lengths vary and
accept_index gets trailing -1 entries; the accept/bonus ops then run on the verify outputs.
"""
import os
import pickle
import select
import struct
import subprocess
import sys
import tempfile
import zlib

import pytest
import torch

from deepseek_v32_plugin.engines.sglang import cpu_spec_ops as ops

SEED = int(os.environ.get("DSV32_SPEC_OPS_SEED") or int.from_bytes(os.urandom(4), "little"))
BATCHES = (1, 3, 7)
# (topk, spec_steps, draft_token_num, orphans): topk=1 chains (draft_token_num = steps + 1, as SGLang asserts)
# and topk>1 trees, up to SGLang's usual topk 4 / 3 steps / 8 tokens and wider.
TREES = (
    (1, 1, 2, False),
    (1, 3, 4, False),
    (1, 6, 7, False),
    (2, 1, 3, False),
    (2, 3, 6, False),
    (4, 3, 8, False),
    (3, 4, 10, False),
    (8, 2, 12, False),
    (3, 3, 9, True),
)
# each tree case with two of the batch sizes, in rotation (every batch size meets chains and trees)
TREE_PARAMS = [pytest.param(bs, case, id=f"bs{bs}-topk{case[0]}-steps{case[1]}-n{case[2]}"
                            + ("-orphans" if case[3] else ""))
               for i, case in enumerate(TREES) for bs in (BATCHES[i % 3], BATCHES[(i + 1) % 3])]


def _gen(*key) -> torch.Generator:
    """A generator per test case: SEED mixed with the case's parameters, so each case reproduces alone."""
    print(f"cpu_spec_ops seed {SEED} (DSV32_SPEC_OPS_SEED={SEED} to reproduce), case {key}")
    return torch.Generator().manual_seed((SEED * 1000003 + zlib.crc32(repr(key).encode())) % 2**63)


def _garbage(g, shape, dtype) -> torch.Tensor:
    """Random nonzero fill for output buffers (bool: random bits)."""
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    return torch.randint(-(2**20), 2**20, shape, generator=g).to(dtype) | 1  # odd values: never 0


ALLOC = "sglang.srt.mem_cache.allocation"
CACHE_LOCS = "sglang.kernels.ops.speculative.cache_locs"
EAGLE = "sglang.kernels.ops.speculative.eagle"
SPEC_TREE = "sglang.kernels.ops.speculative.spec_tree"

# The Triton side, in a child interpreter started with TRITON_INTERPRET=1 (see the module docstring). Protocol
# on stdin/stdout: 8-byte little-endian length + pickle. Request (path "module:attr", grid, args, kwargs):
# with a grid, launches the interpreted kernel attr[grid](*args, **kwargs); without one, calls attr (an SGLang
# host launcher or CPU wrapper). Reply ("ok", (args, kwargs, result)) with the tensors as mutated, or
# ("error", traceback). The first reply describes the child.
_WORKER = r"""
import importlib, os, pickle, struct, sys, traceback
out = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)  # anything the imports print goes to stderr, not into the protocol
inp = sys.stdin.buffer

def send(obj):
    b = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(struct.pack("<Q", len(b)) + b)
    out.flush()

def recv():
    h = inp.read(8)
    if len(h) < 8:
        return None
    return pickle.loads(inp.read(struct.unpack("<Q", h)[0]))

try:
    import triton
    from triton.runtime.interpreter import InterpretedFunction
    mods = {m: importlib.import_module(m) for m in sys.argv[1:]}
    from deepseek_v32_plugin.engines.sglang import cpu_spec_ops as ours
    stub = sys.modules.get("sgl_kernel")
    send(("ok", dict(
        interpret=bool(triton.knobs.runtime.interpret),
        tl_sum_interpreted=isinstance(triton.language.sum, InterpretedFunction),
        sglang_cpu=all(getattr(m, "_is_cpu", False) for m in mods.values()),
        stub=bool(getattr(stub, "DSV32_CPU_STUB", False)),
        stub_serves_ours=stub is not None and all(getattr(stub, n) is f for n, f in ours.OPS.items()),
        ops_file=ours.__file__)))
except BaseException:
    send(("error", traceback.format_exc()))
    sys.exit(1)

while (req := recv()) is not None:
    path, grid, args, kwargs = req
    try:
        mod, attr = path.split(":")
        fn = getattr(mods[mod], attr)
        if grid is not None:
            assert isinstance(fn, InterpretedFunction), f"{path} is {type(fn)}, not interpreted"
            fn[grid](*args, **kwargs)
            ret = None
        else:
            ret = fn(*args, **kwargs)
        send(("ok", (args, kwargs, ret)))
    except BaseException:
        send(("error", traceback.format_exc()))
"""


class _TritonWorker:
    def __init__(self):
        env = dict(os.environ, TRITON_INTERPRET="1")
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER, ALLOC, CACHE_LOCS, EAGLE, SPEC_TREE],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, env=env)
        try:
            self.info = self._recv(timeout=300)
            assert self.info["interpret"] and self.info["tl_sum_interpreted"], f"not interpreting: {self.info}"
        except BaseException:
            self.close()
            raise
        # SGLang's CPU branch (SGLANG_USE_CPU_ENGINE=1, set by cpu_shims) reaching our ops through sgl_kernel
        self.cpu_wrappers = self.info["sglang_cpu"] and self.info["stub"] and self.info["stub_serves_ours"]

    def _stderr_tail(self):
        self.err.seek(0)
        return self.err.read().decode(errors="replace")[-4000:]

    def _recv(self, timeout=120):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        head = self.proc.stdout.read(8) if ready else b""
        if len(head) < 8:
            raise RuntimeError(f"Triton interpreter worker gave no reply (exit code {self.proc.poll()}); "
                               f"its stderr:\n{self._stderr_tail()}")
        status, payload = pickle.loads(self.proc.stdout.read(struct.unpack("<Q", head)[0]))
        if status != "ok":
            raise RuntimeError(f"Triton interpreter worker failed:\n{payload}")
        return payload

    def run(self, path, grid, *args, **kwargs):
        """(args, kwargs, result) after running path in the worker: a kernel launch with a grid, else a call."""
        b = pickle.dumps((path, grid, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.write(struct.pack("<Q", len(b)) + b)
        self.proc.stdin.flush()
        return self._recv()

    def close(self):
        self.proc.stdin.close()  # the worker's loop ends; its interpreter shutdown (SGLang's atexit work) is
        try:                     # slow and of no use here, so it gets 2 s before it is killed
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.err.close()


@pytest.fixture(scope="module")
def sgl():
    w = _TritonWorker()
    print(f"Triton worker: {w.info}")
    yield w
    w.close()


def _next_pow2(x: int) -> int:
    return 1 << max(x - 1, 0).bit_length()


def _same(name, got, want, ctx):
    assert got.dtype == want.dtype and got.shape == want.shape, \
        f"{name}: {got.dtype}{tuple(got.shape)} vs {want.dtype}{tuple(want.shape)} ({ctx})"
    if not torch.equal(got, want):
        bad = (got != want).nonzero().tolist()[:8]
        raise AssertionError(f"{name} differs from SGLang's Triton kernel at {bad} ({ctx}, seed {SEED})\n"
                             f"ours:   {got.tolist()}\ntriton: {want.tolist()}")


def _wrapped(sgl, path, *args, **kwargs):
    """SGLang's CPU wrapper `path` run in the worker (its CPU branch calls our op through sgl_kernel)."""
    return sgl.run(path, None, *args, **kwargs)


def _check_fill_accept_out_cache_loc(sgl, accept_index, out_cache_loc, acc0, ctx):
    """Ours, SGLang's Triton kernel and SGLang's CPU wrapper (when active) write the same buffer."""
    size = acc0.shape[0]
    want = sgl.run(f"{EAGLE}:fill_accept_out_cache_loc", (size,), accept_index, out_cache_loc, acc0.clone(),
                   _next_pow2(size))[0][2]
    got = acc0.clone()
    ops.fill_accept_out_cache_loc_cpu(accept_index, out_cache_loc, got)
    _same("accept_out_cache_loc", got, want, ctx)
    if sgl.cpu_wrappers:
        got = _wrapped(sgl, f"{EAGLE}:fill_accept_out_cache_loc_func", accept_index, out_cache_loc, acc0.clone(),
                       size)[0][2]
        _same("accept_out_cache_loc (via SGLang's CPU wrapper)", got, want, ctx)


def _check_fill_bonus_tokens(sgl, accept_tokens, accept_lens, bon0, width, ctx):
    """Ours, SGLang's Triton kernel and SGLang's CPU wrapper (when active) write the same buffer."""
    bs = bon0.shape[0]
    want = sgl.run(f"{EAGLE}:fill_bonus_tokens", (bs,), accept_tokens, accept_lens, bon0.clone(), width)[0][2]
    got = bon0.clone()
    ops.fill_bonus_tokens_cpu(accept_tokens, accept_lens, got, width)
    _same("bonus_tokens", got, want, ctx)
    if sgl.cpu_wrappers:
        got = _wrapped(sgl, f"{EAGLE}:fill_bonus_tokens_func", accept_tokens, accept_lens, bon0.clone(), width,
                       bs)[0][2]
        _same("bonus_tokens (via SGLang's CPU wrapper)", got, want, ctx)


# ----------------------------------------------------------------------------------------------------------
# request-to-token pool ops


def _pool(g, bs, max_len=160, extra_rows=4):
    """A req_to_token pool (int32, random distinct slot ids) and bs distinct request rows in random order."""
    rows = bs + extra_rows
    req_to_token = (torch.randperm(rows * max_len, generator=g) + 1).to(torch.int32).view(rows, max_len)
    req_pool_indices = torch.randperm(rows, generator=g)[:bs].to(torch.int64)
    return req_to_token, req_pool_indices


def _spans(g, bs, max_len, max_extend=70, allow_empty=True):
    """Per-request [start, end) spans of different lengths, one at least across three 32-token kernel blocks
    (for bs >= 3), empty ones allowed."""
    ext = torch.randint(0 if allow_empty else 1, max_extend + 1, (bs,), generator=g)
    if bs >= 3:
        ext[int(torch.randint(0, bs, (1,), generator=g))] = max_extend
    start = torch.stack([torch.randint(0, max_len - int(e) + 1, (1,), generator=g)[0] for e in ext])
    return start.to(torch.int64), (start + ext).to(torch.int64)


@pytest.mark.parametrize("bs", BATCHES)
def test_assign_req_to_token_pool(sgl, bs):
    g = _gen("req_to_token_pool", bs)
    req_to_token, req_pool_indices = _pool(g, bs)
    start, end = _spans(g, bs, req_to_token.shape[1])
    total = int((end - start).sum())
    out_cache_loc = torch.randperm(10**6, generator=g)[:total].to(torch.int64) + 1
    ctx = f"bs={bs} start={start.tolist()} end={end.tolist()} rows={req_pool_indices.tolist()}"
    want = sgl.run(f"{ALLOC}:assign_req_to_token_pool", (bs,), req_pool_indices, req_to_token.clone(), start,
                   end, out_cache_loc, req_to_token.shape[1], _next_pow2(bs))[0][1]
    assert total == 0 or not torch.equal(want, req_to_token), "the Triton kernel wrote nothing"
    got = req_to_token.clone()
    ops.assign_req_to_token_pool_cpu(req_pool_indices, got, start, end, out_cache_loc, got.shape[1])
    _same("req_to_token", got, want, ctx)
    if sgl.cpu_wrappers:
        got = _wrapped(sgl, f"{ALLOC}:assign_req_to_token_pool_func", req_pool_indices, req_to_token.clone(),
                       start, end, out_cache_loc, bs)[0][1]
        _same("req_to_token (via SGLang's CPU wrapper)", got, want, ctx)


@pytest.mark.parametrize("bs", BATCHES)
def test_assign_extend_cache_locs(sgl, bs):
    g = _gen("extend_cache_locs", bs)
    req_to_token, req_pool_indices = _pool(g, bs)
    start, end = _spans(g, bs, req_to_token.shape[1])
    total = int((end - start).sum())
    out0 = _garbage(g, (total + 5,), torch.int64)  # 5 cells past the end must stay as they are
    ctx = f"bs={bs} start={start.tolist()} end={end.tolist()} rows={req_pool_indices.tolist()}"
    want = sgl.run(f"{CACHE_LOCS}:assign_extend_cache_locs", (bs,), req_pool_indices, req_to_token, start, end,
                   out0.clone(), req_to_token.shape[1], _next_pow2(bs))[0][4]
    got = out0.clone()
    ops.assign_extend_cache_locs_cpu(req_pool_indices, req_to_token, start, end, got, req_to_token.shape[1])
    _same("out_cache_loc", got, want, ctx)
    if sgl.cpu_wrappers:  # returns a fresh bs * draft_token_num buffer; the gathered cells lead it
        n = -(-total // bs)
        res = _wrapped(sgl, f"{CACHE_LOCS}:assign_extend_cache_locs_func", req_pool_indices, req_to_token, start,
                       end, bs, n, "cpu")[2]
        _same("out_cache_loc (via SGLang's CPU wrapper)", res[:total], want[:total], ctx)


@pytest.mark.parametrize("bs", BATCHES)
@pytest.mark.parametrize("topk,steps,cols", [(1, 3, 3), (1, 5, 6), (4, 3, 3), (2, 4, 9), (8, 2, 2)])
def test_assign_draft_cache_locs_contiguous(sgl, bs, topk, steps, cols):
    """cols: SGLang passes num_steps, or num_draft_tokens when the draft's slots lead the verify window."""
    g = _gen("draft_cache_locs", bs, topk, steps, cols)
    req_to_token, req_pool_indices = _pool(g, bs)
    n = topk * cols
    seq_lens = torch.randint(1, req_to_token.shape[1] - n + 1, (bs,), generator=g).to(torch.int64)
    out0 = _garbage(g, (bs * n + 3,), torch.int64)
    ctx = f"bs={bs} topk={topk} cols={cols} seq_lens={seq_lens.tolist()} rows={req_pool_indices.tolist()}"
    want = sgl.run(f"{CACHE_LOCS}:assign_draft_cache_locs_contiguous", (bs,), req_pool_indices, req_to_token,
                   seq_lens, out0.clone(), req_to_token.shape[1], topk, cols, positions=None, mrope=None, BS=bs,
                   WRITE_POSITIONS=False, WRITE_MROPE=False)[0][3]
    got = out0.clone()
    ops.assign_draft_cache_locs_contiguous_cpu(req_pool_indices, req_to_token, seq_lens, got,
                                               req_to_token.shape[1], topk, cols)
    _same("out_cache_loc", got, want, ctx)
    if sgl.cpu_wrappers:
        got = _wrapped(sgl, f"{CACHE_LOCS}:assign_draft_cache_locs_contiguous_func", req_pool_indices,
                       req_to_token, seq_lens, out0.clone(), topk, cols)[0][3]
        _same("out_cache_loc (via SGLang's CPU wrapper)", got, want, ctx)


# ----------------------------------------------------------------------------------------------------------
# EAGLE tree construction and verification


def _eagle_draft(g, bs, topk, steps, n, vocab, orphans=False):
    """(parent_list, selected_index, draft_tokens) as SGLang's EAGLE draft loop makes them: step 0 keeps the
    topk tokens of the root (parents arange(-1, topk)); each later step expands every kept token by its topk
    (cumulative scores, topk * topk candidates), keeps the best topk (their ids in the concatenated token
    list, offset by topk + topk^2 * (step - 1), are the next step's parents); then the best draft_token_num - 1
    scores over all steps, sorted, are the selected tokens. Tokens of one parent are distinct, as top-k ones."""
    def probs(rows):  # descending top-k probabilities in (0, 1) (orphans: up to 3, so depth can raise a score)
        p = torch.rand(rows, topk, generator=g, dtype=torch.float64) + 0.05
        p = p / (p.sum(-1, keepdim=True) + torch.rand(rows, 1, generator=g, dtype=torch.float64))
        if orphans:
            p = p * 3
        return p.sort(-1, descending=True).values

    def tokens(rows):
        return torch.stack([torch.randperm(vocab, generator=g)[:topk] + 1 for _ in range(rows)])

    scores = probs(bs)
    score_list, token_list = [scores.unsqueeze(1)], [tokens(bs)]
    parents_list = [torch.arange(-1, topk, dtype=torch.long).expand(bs, -1)]
    for i in range(1, steps):
        expand = scores.unsqueeze(2) * probs(bs * topk).view(bs, topk, topk)
        scores, cs_index = torch.topk(expand.flatten(1), topk, dim=-1)
        score_list.append(expand)
        token_list.append(tokens(bs * topk).view(bs, topk * topk))
        parents_list.append(cs_index + topk * topk * (i - 1) + topk)
    flat_scores = torch.cat(score_list, dim=1).flatten(1)
    selected = torch.topk(flat_scores, n - 1, dim=-1).indices.sort(-1).values
    draft_tokens = torch.gather(torch.cat(token_list, dim=1), 1, selected)
    if steps > 1:
        parent_list = torch.cat(parents_list[:-1], dim=1).contiguous()
    else:
        parent_list = torch.empty(bs, 0, dtype=torch.long)
    if topk == 1:  # the chain SGLang's preallocated topk1 buffers hold
        assert parent_list.tolist() == [list(range(-1, steps - 1)) if steps > 1 else []] * bs
        assert selected.tolist() == [list(range(steps))] * bs
    return parent_list, selected.contiguous(), draft_tokens


def _build_tree(sgl, g, bs, topk, steps, n, orphans, mode, vocab=50):
    """A random EAGLE tree through SGLang's Triton kernel and our op (and SGLang's CPU wrapper); all outputs
    compared. Returns the inputs and the Triton outputs."""
    parent_list, selected, draft = _eagle_draft(g, bs, topk, steps, n, vocab, orphans)
    seq_lens = torch.randint(1, 41, (bs,), generator=g).to(torch.int64)
    # buffers as SGLang allocates them (retrieve_* all -1: the kernel links into them), except the mask and
    # positions hold garbage instead of True / nothing
    size = int(seq_lens.sum()) * n + n * n * bs if mode == 0 else n * n * bs
    mask0, pos0 = _garbage(g, (size,), torch.bool), _garbage(g, (bs * n,), torch.int64)
    retrieve0 = torch.full((3, bs, n), -1, dtype=torch.long)

    def outs(args):  # mask, positions, retrieve_index, retrieve_next_token, retrieve_next_sibling
        return args[3:8]

    want = outs(sgl.run(f"{SPEC_TREE}:sgl_build_tree_kernel_triton", None, parent_list, selected, seq_lens,
                        mask0.clone(), pos0.clone(), *retrieve0.clone(), topk, steps, n, mode)[0])
    ctx = (f"bs={bs} topk={topk} depth={steps} draft_token_num={n} mode={mode} seq_lens={seq_lens.tolist()} "
           f"parent_list={parent_list.tolist()} selected_index={selected.tolist()}")
    got = (mask0.clone(), pos0.clone(), *retrieve0.clone())
    ops.build_tree_kernel_efficient_cpu(parent_list, selected, seq_lens, *got, topk, steps, n, mode)
    results = [("", got)]
    if sgl.cpu_wrappers:
        results.append((" (via SGLang's CPU wrapper)", outs(_wrapped(
            sgl, f"{SPEC_TREE}:build_tree_kernel_efficient_func", parent_list, selected, seq_lens, mask0.clone(),
            pos0.clone(), *retrieve0.clone(), topk, steps, n, mode)[0])))
    names = ("tree_mask", "positions", "retrieve_index", "retrieve_next_token", "retrieve_next_sibling")
    for label, res in results:
        for name, a, w in zip(names, res, want):
            _same(name + label, a, w, ctx)
    return parent_list, selected, draft, seq_lens, want


@pytest.mark.parametrize("mode", [0, 1], ids=["FULL_MASK", "QLEN_ONLY"])
@pytest.mark.parametrize("bs,case", TREE_PARAMS)
def test_build_tree_kernel_efficient(sgl, bs, case, mode):
    topk, steps, n, orphans = case
    g = _gen("build_tree", bs, case, mode)
    *_, seq_lens, (_, positions, _, next_token, next_sibling) = _build_tree(sgl, g, bs, topk, steps, n, orphans,
                                                                             mode)
    # a real tree: every draft token linked below its parent (unless orphaned), depths 1..steps below the root
    links = int((next_token != -1).sum() + (next_sibling != -1).sum())
    assert orphans or links == bs * (n - 1), f"{links} links for {bs * (n - 1)} draft tokens"
    depth = positions.view(bs, n) - seq_lens[:, None]
    assert (depth[:, 0] == 0).all() and (depth[:, 1:] >= 1).all() and (depth[:, 1:] <= steps).all(), depth


def _children(next_token, next_sibling, b, x):
    c = int(next_token[b, x])
    while c != -1:
        yield c
        c = int(next_sibling[b, c])


@pytest.mark.parametrize("bs,case", TREE_PARAMS)
def test_verify_tree_greedy_then_accept(sgl, bs, case):
    """Greedy verify of a fresh random tree, then the accept-side ops on its outputs, as SGLang's verify step
    chains them: fill_accept_out_cache_loc (accept_index with -1 tails), fill_bonus_tokens (accept_tokens =
    predict[accept_index], accept_lens = accepted + 1) and fill_front_out_cache_loc (assign_extend_cache_locs
    over each request's verify window; SGLang hands the CPU op an int32 window). The tree comes from our
    build_tree_kernel_efficient_cpu (compared with the Triton kernel by the test above) to save time.
    accept_index starts as garbage, not SGLang's -1, so a write past the accepted entries shows; the accept
    ops get it with SGLang's -1 in the unwritten cells."""
    topk, steps, n, orphans = case
    g = _gen("verify", bs, case)
    vocab = topk + 2  # few tokens: chance matches off the planted path too
    parent_list, selected, draft = _eagle_draft(g, bs, topk, steps, n, vocab, orphans)
    seq_lens = torch.randint(1, 41, (bs,), generator=g).to(torch.int64)
    r_index, r_next, r_sibling = torch.full((3, bs, n), -1, dtype=torch.long)
    ops.build_tree_kernel_efficient_cpu(parent_list, selected, seq_lens, torch.empty(n * n * bs, dtype=torch.bool),
                                        torch.empty(bs * n, dtype=torch.long), r_index, r_next, r_sibling, topk,
                                        steps, n, 1)
    candidates = torch.cat([torch.randint(1, vocab + 1, (bs, 1), generator=g), draft], dim=1)  # (bs, n) int64
    target = torch.randint(1, vocab + 1, (bs, n), generator=g)
    for b in range(bs):
        for x in range(n):
            kids = list(_children(r_next, r_sibling, b, x))
            if kids and torch.rand(1, generator=g).item() < 0.75:
                target[b, x] = candidates[b, kids[int(torch.randint(0, len(kids), (1,), generator=g))]]
    ctx = (f"bs={bs} topk={topk} steps={steps} n={n} candidates={candidates.tolist()} "
           f"target_predict={target.tolist()} retrieve_index={r_index.tolist()} "
           f"retrieve_next_token={r_next.tolist()} retrieve_next_sibling={r_sibling.tolist()}")
    tree = (candidates, r_index, r_next, r_sibling, target)
    init = (_garbage(g, (bs * n,), torch.int32), _garbage(g, (bs, steps + 1), torch.int32),
            _garbage(g, (bs,), torch.int32))  # predicts, accept_index, accept_token_num

    want = sgl.run(f"{SPEC_TREE}:verify_tree_greedy_triton", None, *(t.clone() for t in init), *tree)[0][:3]
    got = tuple(t.clone() for t in init)
    ops.verify_tree_greedy_cpu(*got, *tree)
    results = [("", got)]
    if sgl.cpu_wrappers:
        p, a, c = (t.clone() for t in init)
        kw = _wrapped(sgl, f"{SPEC_TREE}:verify_tree_greedy_func", predicts=p, accept_index=a, accept_token_num=c,
                      candidates=candidates, retrieve_index=r_index, retrieve_next_token=r_next,
                      retrieve_next_sibling=r_sibling, target_predict=target, topk=topk)[1]
        results.append((" (via SGLang's CPU wrapper)", (kw["predicts"], kw["accept_index"],
                                                        kw["accept_token_num"])))
    for label, res in results:
        for name, a, w in zip(("predicts", "accept_index", "accept_token_num"), res, want):
            _same(name + label, a, w, ctx)
    predict, accept_index, accepted = want
    assert int(accepted.min()) >= 0 and int(accepted.max()) <= steps, accepted
    unwritten = torch.arange(steps + 1) > accepted[:, None]
    accept_index = accept_index.masked_fill(unwritten, -1)  # what SGLang's -1 initialisation leaves there

    # accept-side ops on the verify outputs
    accept_lens = accepted + 1
    size = bs * accept_index.shape[1]
    out_cache_loc = torch.randperm(10**6, generator=g)[: bs * n].to(torch.int64) + 1
    actx = ctx + f" accept_index={accept_index.tolist()} out_cache_loc={out_cache_loc.tolist()}"

    _check_fill_accept_out_cache_loc(sgl, accept_index, out_cache_loc, _garbage(g, (size,), torch.int64), actx)

    accept_tokens = predict[accept_index.long()]  # SGLang: predict[accept_index]; -1 reads the last cell
    bctx = actx + f" accept_lens={accept_lens.tolist()}"
    _check_fill_bonus_tokens(sgl, accept_tokens, accept_lens, _garbage(g, (bs,), torch.int32),
                             accept_index.shape[1], bctx)

    # fill_front_out_cache_loc: request i's first accept_lens[i] slots of its verify window, packed
    window = out_cache_loc.view(bs, -1)
    rows, starts = torch.arange(bs), torch.zeros_like(accept_lens)
    front0 = _garbage(g, (size,), torch.int64)
    want = sgl.run(f"{CACHE_LOCS}:assign_extend_cache_locs", (bs,), rows, window, starts, accept_lens,
                   front0.clone(), window.shape[1], _next_pow2(bs))[0][4]
    got = front0.clone()
    ops.assign_extend_cache_locs_cpu(rows, window.int(), starts, accept_lens, got, window.shape[1])
    _same("front_out_cache_loc", got, want, bctx)
    if sgl.cpu_wrappers:
        got = _wrapped(sgl, f"{CACHE_LOCS}:fill_front_out_cache_loc_func", accept_lens, out_cache_loc,
                       front0.clone())[0][2]
        _same("front_out_cache_loc (via SGLang's CPU wrapper)", got, want, bctx)


# ----------------------------------------------------------------------------------------------------------
# accept-side ops on arbitrary inputs


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
@pytest.mark.parametrize("width", [2, 5])
@pytest.mark.parametrize("bs", BATCHES)
def test_fill_accept_out_cache_loc(sgl, bs, width, dtype):
    """accept_index with -1 anywhere (not only in row tails)."""
    g = _gen("fill_accept", bs, width, str(dtype))
    size, n_slots = bs * width, bs * 8
    accept_index = torch.randint(0, n_slots, (bs, width), generator=g)
    accept_index[torch.rand(bs, width, generator=g) < 0.4] = -1
    accept_index = accept_index.to(dtype)
    out_cache_loc = torch.randperm(10**6, generator=g)[:n_slots].to(torch.int64) + 1
    ctx = f"accept_index={accept_index.tolist()} out_cache_loc={out_cache_loc.tolist()}"
    _check_fill_accept_out_cache_loc(sgl, accept_index, out_cache_loc, _garbage(g, (size,), torch.int64), ctx)


@pytest.mark.parametrize("width", [1, 4])
@pytest.mark.parametrize("bs", BATCHES)
def test_fill_bonus_tokens(sgl, bs, width):
    g = _gen("fill_bonus", bs, width)
    accept_tokens = torch.randint(1, 2**30, (bs, width), generator=g, dtype=torch.int32)
    accept_lens = torch.randint(1, width + 1, (bs,), generator=g, dtype=torch.int32)
    ctx = f"accept_tokens={accept_tokens.tolist()} accept_lens={accept_lens.tolist()}"
    _check_fill_bonus_tokens(sgl, accept_tokens, accept_lens, _garbage(g, (bs,), torch.int32), width, ctx)


def test_cpu_wrappers_reach_our_ops(sgl):
    """SGLang's CPU branch is what runs our ops in the engine: check the worker saw it active (with cpu_shims
    on), so the '(via SGLang's CPU wrapper)' comparisons above were not skipped."""
    if os.environ.get("DSV32_NO_CPU_SHIMS"):
        pytest.skip("DSV32_NO_CPU_SHIMS is set: SGLang's CPU branch is off, the wrapper path was not compared")
    assert sgl.cpu_wrappers, f"SGLang's CPU wrappers do not reach cpu_spec_ops: {sgl.info}"
    assert os.path.samefile(sgl.info["ops_file"], ops.__file__), (sgl.info["ops_file"], ops.__file__)
