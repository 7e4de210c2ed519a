//! The case budget and the seed of a property test (proptest), the same for every property of
//! the integration suites and of the lifecycle core's unit tests (which include this file).
//!
//! - Cases: the property's own budget, sized for CI on a loaded 2-core machine; a longer run
//!   sets `OCS_FUZZ_CASES=<n>` (every property then runs `n` cases; see README, "Tests").
//! - Seed: `PROPTEST_RNG_SEED` when set; else, under `CI=true`, a fixed seed, so CI runs the
//!   same cases every time; else a fresh random one. Whichever it is, it is printed with the
//!   command that replays it; the test harness shows a test's output when it fails.

use proptest::test_runner::{Config, RngSeed};

/// The seed of every property under `CI=true` (unless `PROPTEST_RNG_SEED` says otherwise).
pub const CI_SEED: u64 = 19_0019;

/// The configuration of a property with `ci_cases` cases (see the module docs).
pub fn config(ci_cases: u32) -> Config {
    let defaults = Config::default();
    let cases = std::env::var("OCS_FUZZ_CASES")
        .ok()
        .map(|n| {
            n.trim()
                .parse()
                .unwrap_or_else(|_| panic!("OCS_FUZZ_CASES={n}: not a number of cases"))
        })
        .unwrap_or(ci_cases);
    let seed = match defaults.rng_seed {
        RngSeed::Fixed(seed) => seed,
        RngSeed::Random if std::env::var("CI").as_deref() == Ok("true") => CI_SEED,
        RngSeed::Random => random_seed(),
    };
    let property = std::thread::current()
        .name()
        .unwrap_or("a property")
        .to_owned();
    println!(
        "{property}: {cases} cases, seed {seed} \
         (replay: PROPTEST_RNG_SEED={seed} OCS_FUZZ_CASES={cases})"
    );
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        ..defaults
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}
