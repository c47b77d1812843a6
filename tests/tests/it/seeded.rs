//! A small seeded random generator, so a failing run replays from its printed seed.

/// A small seeded generator (xorshift64*), so a failing run replays from its seed.
pub(crate) struct Rng(u64);

impl Rng {
    /// Seeded from `LAYOUT_TEST_SEED` when set, else from `default`; the seed is printed.
    pub(crate) fn from_env(default: u64) -> Self {
        let seed = std::env::var("LAYOUT_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default);
        eprintln!("seed: {seed} (replay with LAYOUT_TEST_SEED={seed})");
        Self(seed.max(1))
    }

    /// The next value.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
