// Decode attention over the KV cache in place (included by cpu_matmul.cc, after Simd and Job).
//
// One query position per row attends to the first ``attend`` slots of one layer of the
// stacked cache [layers, batch, kv_heads, max_seq, head_dim], read where the cache holds them.
// XLA:CPU copies each layer's attended slice out of the stack before its two products: on
// Phi-3-mini's batch-1 decode over 128 slots, the copies alone were 7% of a step.
//
// The pure path's numerics (phijax.model.attention), in its order: the score is q . k in f32,
// times head_dim ** -0.5; a slot the mask hides scores the lowest float; the softmax is
// exp(score - max) / sum; the output sums probability x value. Hidden slots then weigh
// exactly 0 wherever one slot is seen, so their keys and values are not read, and the loops
// stop after the last seen slot: the cost follows the filled slots, not the mask's width, so
// a CPU decode attends over the whole cache in one compiled program (phijax.driver.attend_len).
// A row that sees none weighs every slot equally, as the pure path does. Only the order of
// the sums differs from XLA's products.

struct AttentionProblem {
  const float* q;     // [batch, q_heads, head_dim]
  const float* k;     // the layer's [batch, kv_heads, max_seq, head_dim]
  const float* v;
  const bool* mask;   // [batch, attend]
  const int64_t* ends;  // [batch]: one past each row's last seen slot (seen_end), 0 if none
  float* out;         // [batch, q_heads, head_dim]
  int64_t kv_heads, groups, max_seq, head_dim, attend;
  float scale;
};

inline float dot_lanes(const float* a, const float* b, int64_t n) {
  V acc = Simd::zero();
  for (int64_t c = 0; c < n; c += kLanes) acc = Simd::fmadd(Simd::load(a + c), Simd::load(b + c), acc);
  return Simd::sum(acc);
}

// One past the last slot of ``seen [n]`` that is set, or 0: the slots after it weigh exactly 0.
inline int64_t seen_end(const bool* seen, int64_t n) {
  int64_t end = n;
  for (; end >= 8; end -= 8) {  // 8 flags a load: a 4096-slot mask in 512 steps
    uint64_t flags;
    std::memcpy(&flags, seen + end - 8, 8);
    if (flags) break;
  }
  while (end > 0 && !seen[end - 1]) --end;
  return end;
}

// The query heads of kv head ``task`` (row * kv_heads + head); ``probs``: room for the row's loops.
void attend_head(const AttentionProblem& p, int64_t task, float* probs) {
  const int64_t row = task / p.kv_heads, d = p.head_dim;
  const float* keys = p.k + task * p.max_seq * d;
  const float* values = p.v + task * p.max_seq * d;
  const bool* seen = p.mask + row * p.attend;
  const bool any = p.ends[row] > 0;
  const int64_t n = any ? p.ends[row] : p.attend;
  constexpr float kHidden = std::numeric_limits<float>::lowest();
  for (int64_t g = 0; g < p.groups; ++g) {
    const int64_t head = task * p.groups + g;  // row * q_heads + kv head * groups + g
    const float* q = p.q + head * d;
    float top = kHidden;
    for (int64_t t = 0; t < n; ++t) {
      probs[t] = seen[t] ? dot_lanes(q, keys + t * d, d) * p.scale : kHidden;
      top = std::max(top, probs[t]);
    }
    float total = 0.0f;
    for (int64_t t = 0; t < n; ++t) {
      probs[t] = std::exp(probs[t] - top);
      total += probs[t];
    }
    for (int64_t t = 0; t < n; ++t) probs[t] /= total;
    float* out = p.out + head * d;
    for (int64_t c = 0; c < d; c += kLanes) {
      V acc = Simd::zero();
      for (int64_t t = 0; t < n; ++t) {
        if (any && !seen[t]) continue;
        acc = Simd::fmadd(Simd::set1(probs[t]), Simd::load(values + t * d + c), acc);
      }
      Simd::store(out + c, acc);
    }
  }
}

ffi::Error CpuAttentionImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                            ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> layer, ffi::Buffer<ffi::PRED> mask,
                            ffi::ResultBuffer<ffi::F32> out) {
  const auto qd = q.dimensions(), kd = k.dimensions(), md = mask.dimensions();
  if (kd.size() != 5 || v.dimensions().size() != 5 || !std::equal(kd.begin(), kd.end(), v.dimensions().begin())) {
    return ffi::Error::InvalidArgument("cpu_attention: k and v must be one shape [layers, batch, kv_heads, seq, dim]");
  }
  const int64_t layers = kd[0], batch = kd[1], kv_heads = kd[2], max_seq = kd[3], d = kd[4];
  if (qd.size() != 3 || qd[0] != batch || kv_heads == 0 || qd[1] % kv_heads != 0 || qd[2] != d || d % kLanes != 0) {
    return ffi::Error::InvalidArgument(
        "cpu_attention: q must be [batch, kv_heads * groups, head_dim], head_dim a multiple of the lanes");
  }
  if (md.size() != 2 || md[0] != batch || md[1] < 1 || md[1] > max_seq) {
    return ffi::Error::InvalidArgument("cpu_attention: the mask must be [batch, attended slots <= seq]");
  }
  const auto od = out->dimensions();
  if (!std::equal(od.begin(), od.end(), qd.begin(), qd.end())) {
    return ffi::Error::InvalidArgument("cpu_attention: the output must have q's shape");
  }
  if (layer.element_count() != 1) return ffi::Error::InvalidArgument("cpu_attention: the layer is one int32");
  const int64_t at = layer.typed_data()[0];
  if (at < 0 || at >= layers) return ffi::Error::InvalidArgument("cpu_attention: the layer is out of range");
  const int64_t per_layer = batch * kv_heads * max_seq * d;
  auto ends = std::make_shared<std::vector<int64_t>>(batch);
  int64_t longest = 0;  // the most slots a row's loops run over: the room its probabilities need
  for (int64_t row = 0; row < batch; ++row) {
    (*ends)[row] = seen_end(mask.typed_data() + row * md[1], md[1]);
    longest = std::max(longest, (*ends)[row] > 0 ? (*ends)[row] : md[1]);
  }
  auto p = std::make_shared<AttentionProblem>(AttentionProblem{
      q.typed_data(), k.typed_data() + at * per_layer, v.typed_data() + at * per_layer, mask.typed_data(),
      ends->data(), out->typed_data(), kv_heads, qd[1] / kv_heads, max_seq, d, md[1],
      static_cast<float>(std::pow(static_cast<double>(d), -0.5))});
  auto job = std::make_shared<Job>();
  job->columns = [p, ends, longest](int64_t t0, int64_t t1) {
    std::vector<float> probs(longest);
    for (int64_t t = t0; t < t1; ++t) attend_head(*p, t, probs.data());
  };
  job->rows = batch * kv_heads;
  job->chunk = std::max<int64_t>(1, job->rows / 16);
  job->chunks = (job->rows + job->chunk - 1) / job->chunk;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), job->chunks) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([job] { job->work(); });
  job->work();
  while (job->done.load(std::memory_order_acquire) < job->chunks) std::this_thread::yield();
  return ffi::Error::Success();
}
