//! Seeded synthetic access patterns for hit-ratio measurements: the shapes on which recency
//! and frequency policies disagree. Shared by `examples/hit_ratio.rs` (its synthetic rows) and
//! `tests/bounded.rs` (the adaptation tests), so that both measure the same workloads.
//!
//! Every generator is a pure function of its arguments: the same seed gives the same keys on
//! every machine (a SplitMix64 stream and an exact Zipf table, no platform-dependent floats
//! beyond IEEE arithmetic).
#![allow(dead_code)] // each includer uses a subset

/// A hasher for the caches under test, one per seed: std's `DefaultHasher` with its fixed
/// keys, fed the seed before the key (seed 0: nothing, so it is `BuildHasherDefault<
/// DefaultHasher>` exactly). Unlike a seeded `ahash`, whose output depends on the target's
/// instructions (AES or not), it hashes alike on every little-endian machine, so results
/// measured over several hashers repeat elsewhere.
#[derive(Clone, Copy, Debug, Default)]
pub struct Seeded(pub u64);

impl std::hash::BuildHasher for Seeded {
    type Hasher = std::collections::hash_map::DefaultHasher;

    fn build_hasher(&self) -> Self::Hasher {
        use std::hash::Hasher;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        if self.0 != 0 {
            h.write_u64(self.0);
        }
        h
    }
}

/// SplitMix64: a small, well-mixed, portable pseudo-random stream.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is below 2^-40 for the sizes used here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A bijective 64-bit mix (SplitMix64's finaliser): turns ranks into unordered keys.
pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Zipf over ranks `0..n` with exponent `skew` (rank r drawn with probability proportional to
/// 1 / (r + 1)^skew), by inversion of the exact cumulative table.
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, skew: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for r in 0..n {
            sum += 1.0 / ((r + 1) as f64).powf(skew);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf }
    }

    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1) as u64
    }
}

/// Back-and-forth sweeps: keys `0..range` in order, then back down, `rounds` times; a fraction
/// `noise` of the requests is a uniform key of the range instead. Recency wins (a FIFO or LRU
/// of half the range hits about half the time); a frequency filter sees every key equally often
/// and has nothing to protect.
pub fn sweep(range: u64, rounds: usize, noise: f64, seed: u64) -> Vec<u64> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(2 * range as usize * rounds);
    for _ in 0..rounds {
        for k in (0..range).chain((0..range).rev()) {
            out.push(if rng.unit() < noise {
                rng.below(range)
            } else {
                k
            });
        }
    }
    out
}

/// A sliding window: request `i` is a uniform key of `[i / stride, i / stride + width)`, so
/// each key is live for `stride * width` requests and then never used again. Recency wins.
pub fn sliding_window(len: usize, width: u64, stride: u64, seed: u64) -> Vec<u64> {
    let mut rng = Rng::new(seed);
    (0..len as u64)
        .map(|i| mix(i / stride + rng.below(width)))
        .collect()
}

/// A working set that shifts abruptly: `phases` phases of `phase_len` requests, each Zipf
/// (`skew`) over `keys` keys of its own. What was hot in one phase is never used again.
pub fn shift(phases: usize, phase_len: usize, keys: usize, skew: f64, seed: u64) -> Vec<u64> {
    let mut rng = Rng::new(seed);
    let zipf = Zipf::new(keys, skew);
    let mut out = Vec::with_capacity(phases * phase_len);
    for p in 0..phases as u64 {
        for _ in 0..phase_len {
            out.push(mix((p << 40) | zipf.sample(&mut rng)));
        }
    }
    out
}

/// A loop: keys `0..n` in order, `reps` times. LRU and FIFO hit nothing once `n` exceeds the
/// cache; the optimum keeps a fixed subset.
pub fn looped(n: u64, reps: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n as usize * reps);
    for _ in 0..reps {
        out.extend((0..n).map(mix));
    }
    out
}

/// Independent Zipf (`skew`) draws over `n` keys. Frequency wins, more so the larger the skew.
pub fn zipf(n: usize, skew: f64, len: usize, seed: u64) -> Vec<u64> {
    let mut rng = Rng::new(seed);
    let z = Zipf::new(n, skew);
    (0..len).map(|_| mix(z.sample(&mut rng))).collect()
}

/// A hot set under scans: `rounds` times, `hot_run` Zipf (`skew`) requests over `hot` keys,
/// then a scan of `scan_run` keys never seen before. A policy must keep the hot set through
/// the scans (LRU flushes it each time).
pub fn scan_hot(
    hot: usize,
    skew: f64,
    hot_run: usize,
    scan_run: u64,
    rounds: usize,
    seed: u64,
) -> Vec<u64> {
    let mut rng = Rng::new(seed);
    let z = Zipf::new(hot, skew);
    let mut out = Vec::new();
    let mut next_scan = 1u64 << 50;
    for _ in 0..rounds {
        for _ in 0..hot_run {
            out.push(mix(z.sample(&mut rng)));
        }
        for _ in 0..scan_run {
            out.push(mix(next_scan));
            next_scan += 1;
        }
    }
    out
}

/// Regimes that alternate: a frequency phase (Zipf 0.9 over `4 * unit` keys), a recency phase
/// (back-and-forth sweeps over `2 * unit` keys), and a loop over `unit * 5 / 4` keys, each
/// `phase_len` requests over keys of its own, `cycles` times. The best policy changes at every
/// phase boundary; an adaptive one must follow.
pub fn phases(unit: u64, phase_len: usize, cycles: usize, seed: u64) -> Vec<u64> {
    let mut rng = Rng::new(seed);
    let zipf = Zipf::new(4 * unit as usize, 0.9);
    let mut out = Vec::with_capacity(3 * phase_len * cycles);
    let mut tag = 0u64;
    for _ in 0..cycles {
        tag += 1;
        for _ in 0..phase_len {
            out.push(mix((tag << 40) | zipf.sample(&mut rng)));
        }
        tag += 1;
        let range = 2 * unit;
        let mut k = 0u64;
        let mut up = true;
        for _ in 0..phase_len {
            out.push(mix((tag << 40) | k));
            if up && k + 1 == range {
                up = false;
            } else if !up && k == 0 {
                up = true;
            } else if up {
                k += 1;
            } else {
                k -= 1;
            }
        }
        tag += 1;
        let n = unit * 5 / 4;
        for i in 0..phase_len as u64 {
            out.push(mix((tag << 40) | (i % n)));
        }
    }
    out
}

/// A named synthetic workload and the cache sizes it is measured at.
pub struct Shape {
    pub name: &'static str,
    pub sizes: &'static [u64],
    pub keys: fn() -> Vec<u64>,
}

/// The synthetic rows of the hit-ratio table (a few hundred thousand requests each).
pub const SHAPES: &[Shape] = &[
    Shape {
        name: "sweep",
        sizes: &[2_500, 5_000],
        keys: || sweep(10_000, 25, 0.05, 1),
    },
    Shape {
        name: "window",
        sizes: &[1_000, 4_000],
        keys: || sliding_window(500_000, 8_000, 8, 2),
    },
    Shape {
        name: "shift",
        sizes: &[1_000, 5_000],
        keys: || shift(6, 100_000, 20_000, 0.9, 3),
    },
    Shape {
        name: "phases",
        sizes: &[4_000],
        keys: || phases(4_000, 100_000, 3, 4),
    },
    Shape {
        name: "loop-synth",
        sizes: &[2_500, 4_000],
        keys: || looped(5_000, 100),
    },
    Shape {
        name: "zipf-0.6",
        sizes: &[1_000, 10_000],
        keys: || zipf(100_000, 0.6, 500_000, 5),
    },
    Shape {
        name: "zipf-0.8",
        sizes: &[1_000, 10_000],
        keys: || zipf(100_000, 0.8, 500_000, 6),
    },
    Shape {
        name: "zipf-1.0",
        sizes: &[1_000, 10_000],
        keys: || zipf(100_000, 1.0, 500_000, 7),
    },
    Shape {
        name: "zipf-1.2",
        sizes: &[1_000, 10_000],
        keys: || zipf(100_000, 1.2, 500_000, 8),
    },
    Shape {
        name: "scan-hot",
        sizes: &[1_000, 4_000],
        keys: || scan_hot(5_000, 0.8, 50_000, 20_000, 10, 9),
    },
];
