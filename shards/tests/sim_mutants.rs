//! The simulator finds bugs: each deliberate bug of `ferry_shards::mutants` is caught within
//! `SEEDS_MAX` seeds (docs/SIMULATION.md lists the seed that catches each). Runs only with the
//! `sim-mutants` feature: `cargo test -p ferry-shards --features sim-mutants --test sim_mutants`.

use ferry_shards::mutants::{self, Mutant};
use ferry_shards::sim::{self, SimConfig};

/// Seeds each mutant may take before the simulator must have caught it.
const SEEDS_MAX: u64 = 50;

fn first_catch(m: Mutant) -> Option<(u64, String)> {
    mutants::set(Some(m));
    let found = (1..=SEEDS_MAX).find_map(|seed| {
        sim::run(&SimConfig::from_seed(seed))
            .err()
            .map(|v| (seed, v.what))
    });
    mutants::set(None);
    found
}

#[test]
fn every_mutant_is_caught() {
    let mut missed = Vec::new();
    for m in Mutant::ALL {
        match first_catch(m) {
            Some((seed, what)) => println!(
                "{m:?}: caught by seed {seed}: {what} (replay: FERRY_SIM_MUTANT={m:?} FERRY_SIM_SEED={seed} cargo test -p ferry-shards --features sim-mutants --test sim_mutants -- replay_mutant --nocapture)"
            ),
            None => missed.push(m),
        }
    }
    assert!(
        missed.is_empty(),
        "not caught within {SEEDS_MAX} seeds: {missed:?}"
    );
}

/// One mutant on one seed, to follow a catch (`FERRY_SIM_TRACE=1` prints each step); without
/// the variables, `SkipSync` on the first seed that catches it.
#[test]
fn replay_mutant() {
    let name = std::env::var("FERRY_SIM_MUTANT").unwrap_or_else(|_| "SkipSync".into());
    let m = Mutant::ALL
        .into_iter()
        .find(|m| format!("{m:?}") == name)
        .unwrap_or_else(|| panic!("FERRY_SIM_MUTANT: one of {:?}", Mutant::ALL));
    let seed = std::env::var("FERRY_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .or_else(|| first_catch(m).map(|(seed, _)| seed))
        .unwrap_or_else(|| panic!("{m:?} not caught within {SEEDS_MAX} seeds"));
    mutants::set(Some(m));
    let outcome = sim::run(&SimConfig::from_seed(seed));
    mutants::set(None);
    match outcome {
        Err(v) => println!("{m:?} on seed {seed}: {}", v.what),
        Ok(r) => panic!("{m:?} not caught by seed {seed}: {r:?}"),
    }
}
