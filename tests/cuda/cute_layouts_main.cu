// Host check (nvcc, no GPU) of the shared-memory addressing in the sm_90a kernels: the offsets their
// hand-written loaders use (dsv32::tile_offset) must equal the addresses CuTe's swizzled smem tensors —
// what the wgmma descriptors describe — give for every coordinate; and the sparse-MLA V view must alias
// the KV tile element for element. Prints one line per check, exits non-zero on any mismatch.
#include <cstdio>
#include <cstdlib>

#include "fp8_moe/sm90/config.h"
#include "indexer/sm90/config.h"
#include "sparse_mla/sm90/config.h"

using namespace cute;

template <class T>
static T* aligned_buffer(size_t n) {
  return static_cast<T*>(aligned_alloc(1024, ((n * sizeof(T) + 1023) / 1024) * 1024));
}

template <class Layout, class T>
static long check2(const char* name, int rows, int cols) {
  T* base = aligned_buffer<T>(cosize_v<Layout>);
  Tensor t = make_tensor(make_smem_ptr(base), Layout{});
  long bad = 0;
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) bad += (&t(r, c) - base) != dsv32::tile_offset<Layout>(r, c);
  printf("%-28s %ld mismatches\n", name, bad);
  free(base);
  return bad;
}

template <class Layout, class T>
static long check3(const char* name, int rows, int cols, int stages) {
  T* base = aligned_buffer<T>(cosize_v<Layout>);
  Tensor t = make_tensor(make_smem_ptr(base), Layout{});
  long bad = 0;
  for (int s = 0; s < stages; ++s)
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c) bad += (&t(r, c, s) - base) != dsv32::tile_offset<Layout>(r, c, s);
  printf("%-28s %ld mismatches\n", name, bad);
  free(base);
  return bad;
}

int main() {
  namespace g = dsv32::sm90::gemm;
  namespace ix = dsv32::sm90::logits;
  namespace m = dsv32::sm90::mla_decode;
  long bad = 0;
  bad += check3<g::SmemLayoutA, uint8_t>("gemm A", g::kBM, g::kBK, g::kStages);
  bad += check3<g::SmemLayoutB, uint8_t>("gemm B", g::kBN, g::kBK, g::kStages);
  bad += check2<ix::Cfg<64>::LayoutQ, uint8_t>("indexer Q", 64, 128);
  bad += check2<ix::Cfg<64>::LayoutK, uint8_t>("indexer K (64)", 64, 128);
  bad += check2<ix::Cfg<128>::LayoutK, uint8_t>("indexer K (128)", 128, 128);
  bad += check2<m::LayoutQ, m::bf16>("mla Q", m::kHeads, m::kD);
  bad += check2<m::LayoutKV, m::bf16>("mla KV", m::kKeys, m::kD);
  bad += check2<m::LayoutP, m::bf16>("mla P", m::kHeads, m::kKeys);
  {  // V view of warpgroup w == KV tile columns [256w, 256w + 256)
    m::bf16* base = aligned_buffer<m::bf16>(cosize_v<m::LayoutKV>);
    Tensor kv = make_tensor(make_smem_ptr(base), m::LayoutKV{});
    long vb = 0;
    for (int w = 0; w < 2; ++w) {
      Tensor v = make_tensor(make_smem_ptr(base + w * m::kVOffset), m::LayoutV{});
      for (int d = 0; d < m::kDVPerWg; ++d)
        for (int k = 0; k < m::kKeys; ++k) vb += &v(d, k) != &kv(k, w * m::kDVPerWg + d);
    }
    printf("%-28s %ld mismatches\n", "mla V view aliases KV", vb);
    bad += vb;
    free(base);
  }
  {  // prefill: warpgroup w's S operand (local_tile of the KV tile) == KV rows [32w, 32w + 32)
    namespace p = dsv32::sm90::mla_prefill;
    p::bf16* base = aligned_buffer<p::bf16>(cosize_v<p::LayoutKV>);
    Tensor kv = make_tensor(make_smem_ptr(base), p::LayoutKV{});
    long kb = 0;
    for (int w = 0; w < 2; ++w) {
      Tensor kw = local_tile(kv, Shape<Int<p::kKeysPerWg>, Int<p::kD>>{}, make_coord(w, 0));
      for (int r = 0; r < p::kKeysPerWg; ++r)
        for (int d = 0; d < p::kD; ++d) kb += &kw(r, d) != &kv(w * p::kKeysPerWg + r, d);
    }
    printf("%-28s %ld mismatches\n", "mla prefill K halves", kb);
    bad += kb;
    free(base);
  }
  // smem budgets (bytes, before the 1 KB alignment slack): sm_90 allows 227 KB per block
  printf("smem gemm %zu indexer64 %zu indexer128 %zu mla %zu\n", size_t(cosize_v<g::SmemLayoutA>) + cosize_v<g::SmemLayoutB>,
         sizeof(ix::Cfg<64>::Smem), sizeof(ix::Cfg<128>::Smem), sizeof(m::Smem));
  printf("smem mla prefill %zu\n", sizeof(dsv32::sm90::mla_prefill::Smem));
  if (sizeof(m::Smem) + 1024 > 227 * 1024 || sizeof(dsv32::sm90::mla_prefill::Smem) + 1024 > 227 * 1024 || sizeof(ix::Cfg<128>::Smem) + 1024 > 227 * 1024) bad += 1;
  return bad ? 1 : 0;
}
