"""Torch versions of the sgl_kernel CPU ops that SGLang's EAGLE/NEXTN path calls on a CPU engine.

SGLang's CPU path imports these from sgl_kernel's CPU build, which has no wheel on PyPI; cpu_shims serves
them from its sgl_kernel stand-in (CPU venvs only; a real sgl_kernel always wins). Each function mutates its
output arguments in place, with the argument order of the op it stands in for (see the call sites in
sglang/srt/mem_cache/allocation.py and sglang/kernels/ops/speculative/{cache_locs,eagle,spec_tree}.py).
Request loops are in Python: batches are small on a CPU engine, and clarity beats speed here.
"""
from __future__ import annotations

import torch


def assign_req_to_token_pool_cpu(req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc,
                                 pool_len):
    """req_to_token[req, start:end] = the request's share of out_cache_loc (concatenated over requests)."""
    off = 0
    for req, start, end in zip(req_pool_indices.tolist(), start_offset.tolist(), end_offset.tolist()):
        req_to_token[req, start:end] = out_cache_loc[off: off + end - start].to(req_to_token.dtype)
        off += end - start


def assign_extend_cache_locs_cpu(req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc,
                                 pool_len):
    """The inverse gather: out_cache_loc (concatenated over requests) = req_to_token[req, start:end]."""
    off = 0
    for req, start, end in zip(req_pool_indices.tolist(), start_offset.tolist(), end_offset.tolist()):
        out_cache_loc[off: off + end - start] = req_to_token[req, start:end].to(out_cache_loc.dtype)
        off += end - start


def assign_draft_cache_locs_contiguous_cpu(req_pool_indices, req_to_token, seq_lens, out_cache_loc, pool_len,
                                           topk, num_cols):
    """Request i's topk * num_cols draft slots, read from req_to_token from its seq_len on, to row i."""
    n = topk * num_cols
    for i, (req, start) in enumerate(zip(req_pool_indices.tolist(), seq_lens.tolist())):
        out_cache_loc[i * n: (i + 1) * n] = req_to_token[req, start: start + n].to(out_cache_loc.dtype)


def fill_bonus_tokens_cpu(accept_tokens, accept_lens, bonus_tokens, accept_stride):
    """bonus_tokens[i] = the last accepted token of request i (accept_lens include the bonus token)."""
    flat = accept_tokens.reshape(-1)
    for i, n in enumerate(accept_lens.tolist()):
        bonus_tokens[i] = flat[accept_stride * i + n - 1]


def fill_accept_out_cache_loc_cpu(accept_index, out_cache_loc, accept_out_cache_loc):
    """Compact the cache slots of the accepted draft tokens (accept_index entries != -1), in order."""
    idx = accept_index.reshape(-1)
    keep = idx[idx != -1].long()
    accept_out_cache_loc[: keep.numel()] = out_cache_loc[keep].to(accept_out_cache_loc.dtype)


def build_tree_kernel_efficient_cpu(parent_list, selected_index, verified_seq_len, tree_mask, positions,
                                    retrieve_index, retrieve_next_token, retrieve_next_sibling, topk, depth,
                                    draft_token_num, tree_mask_mode):
    """EAGLE draft tree -> verify inputs. Node 0 of each request is its last verified token; node x >= 1 is
    selected draft token x - 1, whose parent is found through parent_list. Writes positions (seq_len + tree
    depth), retrieve_index (flat node ids), first-child / next-sibling links, and the attention mask among
    the draft tokens (tree_mask_mode 0: rows of [seq_len + n] over the whole batch; 1: [n, n] per request)."""
    n = draft_token_num
    bs = verified_seq_len.shape[0]
    seq = verified_seq_len.tolist()
    sel = selected_index.reshape(bs, -1).tolist()
    parents = parent_list.reshape(bs, -1).tolist() if parent_list.numel() else [[] for _ in range(bs)]
    prefix = 0
    for b in range(bs):
        s = seq[b]

        def parent_node(x):  # tree node of the parent of node x >= 1 (0 = the verified token), None if absent
            tb = sel[b][x - 1] // topk
            if tb == 0:
                return 0
            tok = parents[b][tb]
            for pp in range(n - 1):
                if sel[b][pp] == tok:
                    return pp + 1
            return None

        retrieve_index[b, 0] = b * n
        for x in range(n - 1, 0, -1):
            retrieve_index[b, x] = b * n + x
            par = parent_node(x)
            if par is not None:
                prev = int(retrieve_next_token[b, par])
                retrieve_next_token[b, par] = x
                if prev != -1:
                    retrieve_next_sibling[b, x] = prev
        positions[b * n] = s
        for x in range(n):
            if tree_mask_mode == 0:
                row = prefix * n + n * n * b + (s + n) * x + s     # the row's slot of the verified token
            else:
                row = n * n * b + n * x
            tree_mask[row] = True
            tree_mask[row + 1: row + n] = False
            if x == 0:
                continue
            node, d = x, 0
            for _ in range(depth):
                tree_mask[row + node] = True
                d += 1
                par = parent_node(node)
                if par is None or par == 0:
                    break
                node = par
            positions[b * n + x] = s + d
        prefix += s


def verify_tree_greedy_cpu(predicts, accept_index, accept_token_num, candidates, retrive_index,
                           retrive_next_token, retrive_next_sibling, target_predict):
    """Greedy verification: walk each request's tree from its root, at each level accepting the child whose
    draft token equals the target's greedy token after the last accepted node; predicts gets the target
    token at every accepted node (the bonus token at the last one)."""
    bs, n = candidates.shape
    steps = accept_index.shape[1]
    tgt = target_predict.reshape(-1)
    for b in range(bs):
        last = int(retrive_index[b, 0])
        accept_index[b, 0] = last
        accepted, cur = 0, 0
        for _ in range(1, steps):
            cur = int(retrive_next_token[b, cur])
            want = int(tgt[last])
            while cur != -1 and int(candidates[b, cur]) != want:
                cur = int(retrive_next_sibling[b, cur])
            if cur == -1:
                break
            predicts[last] = want
            accepted += 1
            last = int(retrive_index[b, cur])
            accept_index[b, accepted] = last
        accept_token_num[b] = accepted
        predicts[last] = tgt[last]


OPS = {f.__name__: f for f in (assign_req_to_token_pool_cpu, assign_extend_cache_locs_cpu,
                                assign_draft_cache_locs_contiguous_cpu, fill_bonus_tokens_cpu,
                                fill_accept_out_cache_loc_cpu, build_tree_kernel_efficient_cpu,
                                verify_tree_greedy_cpu)}
