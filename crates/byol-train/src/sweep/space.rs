//! The values a sweep's parameters take: `[sweep.parameters]` read into value spaces, and the
//! trials a grid or a random search makes of them.

use anyhow::{bail, Context};

use byol_data::rng::SplitMix64;

use super::{Method, Parameter, Space, SweepConfig, Trial};

/// The keys of `[sweep]` itself ([`SweepConfig`] but its parameters).
const SWEEP_KEYS: [&str; 7] = ["method", "trials", "seed", "metric", "goal", "prune", "prune_after"];

/// Flattens `[sweep.parameters]` into dotted keys and checks each value space.
pub(super) fn parse_parameters(table: &toml::Table) -> anyhow::Result<Vec<Parameter>> {
    fn walk(table: &toml::Table, prefix: &str, out: &mut Vec<Parameter>) -> anyhow::Result<()> {
        for (k, value) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            let space = match value {
                toml::Value::Array(values) if values.is_empty() => {
                    bail!("sweep.parameters.\"{key}\" is an empty list")
                }
                toml::Value::Array(values) => Space::Values(values.clone()),
                toml::Value::Table(t) if t.contains_key("min") || t.contains_key("max") => range(&key, t)?,
                toml::Value::Table(t) => {
                    walk(t, &key, out)?;
                    continue;
                }
                // `metric = ...` written below the [sweep.parameters] header belongs to it.
                other if prefix.is_empty() && SWEEP_KEYS.contains(&key.as_str()) => bail!(
                    "sweep.parameters.\"{key}\" = {other}: {key} is a key of [sweep], but it is written \
                     below the [sweep.parameters] header, which holds what follows it; move it above that header"
                ),
                other => bail!(
                    "sweep.parameters.\"{key}\" = {other} is neither a list of values nor a {{ min = .., max = .. }} range"
                ),
            };
            if key.split('.').any(|part| part.is_empty() || part.trim() != part) {
                bail!(
                    "sweep.parameters.\"{key}\": a part of the key is empty or has spaces around it; write it as \
                     --set takes it, e.g. \"optimizer.lr\""
                );
            }
            out.push(Parameter { key, space });
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(table, "", &mut out)?;
    // Alphabetical, whatever order the TOML table keeps: trial numbers must not depend on it.
    out.sort_by(|a, b| a.key.cmp(&b.key));
    // `"optimizer.lr" = [..]` and `[sweep.parameters.optimizer] lr = [..]` name one key: the
    // later would override the earlier in every trial, and its values would never be tried.
    if let Some(twice) = out.windows(2).find(|w| w[0].key == w[1].key) {
        bail!(
            "sweep.parameters names {} twice (as a dotted key and inside a table): keep one",
            twice[0].key
        );
    }
    // A table swept whole and a key inside it: which value a trial trains with would depend on
    // the order the two are set in, and the table's column would show values not trained with.
    for (outer, inner) in out.iter().flat_map(|a| out.iter().map(move |b| (a, b))) {
        if super::path_within(&outer.key, &inner.key).is_some() {
            bail!(
                "sweep.parameters sweeps the table {} whole and {} inside it: keep one (sweep the keys of \
                 the table one by one)",
                outer.key,
                inner.key
            );
        }
    }
    // The sweep names each trial's run and its folder.
    for p in &out {
        if let Some(key) = ["run.name", "run.output_dir"].into_iter().find(|k| p.sets(k)) {
            bail!(
                "sweep.parameters.\"{}\" sets {key}, which the sweep sets for each trial (runs \
                 <run.output_dir>/<run.name>-sweep/trial-NNN): sweep other keys, or run one sweep per value",
                p.key
            );
        }
    }
    if out.is_empty() {
        bail!("[sweep.parameters] is empty: name at least one key, e.g. \"optimizer.lr\" = [0.5, 1.0]");
    }
    Ok(out)
}

/// Whether the values of `space`, swept at the table `key`, set the dotted key `inner` inside it.
pub(super) fn holds(space: &Space, key: &str, inner: &str) -> bool {
    let Some(rest) = super::path_within(key, inner) else {
        return false;
    };
    let Space::Values(values) = space else {
        return false;
    };
    values.iter().any(|value| super::holds_path(value, rest))
}

fn range(key: &str, t: &toml::Table) -> anyhow::Result<Space> {
    if let Some(other) = t.keys().find(|k| !["min", "max", "log"].contains(&k.as_str())) {
        bail!("sweep.parameters.\"{key}\": a range has keys min, max and log, not '{other}'");
    }
    let number = |bound: &str| -> anyhow::Result<(f64, bool)> {
        match t.get(bound) {
            Some(toml::Value::Integer(i)) => Ok((*i as f64, true)),
            Some(toml::Value::Float(f)) => Ok((*f, false)),
            Some(other) => bail!("sweep.parameters.\"{key}\".{bound} = {other} is not a number"),
            None => bail!("sweep.parameters.\"{key}\" has no {bound}"),
        }
    };
    let ((min, min_int), (max, max_int)) = (number("min")?, number("max")?);
    let log = match t.get("log") {
        None => false,
        Some(toml::Value::Boolean(b)) => *b,
        Some(other) => bail!("sweep.parameters.\"{key}\".log = {other} is not true or false"),
    };
    if !(min.is_finite() && max.is_finite() && min < max) {
        bail!("sweep.parameters.\"{key}\": min = {min} must be below max = {max}");
    }
    if log && min <= 0.0 {
        bail!("sweep.parameters.\"{key}\": log = true needs min > 0 (min = {min})");
    }
    Ok(Space::Range {
        min,
        max,
        log,
        integer: min_int && max_int,
    })
}

/// The trials of a sweep, in order.
pub(super) fn expand(config: &SweepConfig, parameters: &[Parameter]) -> anyhow::Result<Vec<Trial>> {
    if config.trials == Some(0) {
        bail!("sweep.trials = 0: nothing to run");
    }
    match config.method {
        Method::Grid => {
            let mut lists = Vec::new();
            for p in parameters {
                match &p.space {
                    Space::Values(values) => lists.push(values),
                    Space::Range { .. } => bail!(
                        "sweep.parameters.\"{}\" is a range, which only method = \"random\" can draw from; \
                         give a grid a list of values",
                        p.key
                    ),
                }
            }
            let total: usize = lists.iter().map(|l| l.len()).product();
            let count = config.trials.map_or(total, |cap| cap.min(total));
            Ok((0..count)
                .map(|n| {
                    // Mixed radix, the last parameter varying fastest.
                    let mut rest = n;
                    let mut values = vec![toml::Value::Boolean(false); lists.len()];
                    for (i, list) in lists.iter().enumerate().rev() {
                        values[i] = list[rest % list.len()].clone();
                        rest /= list.len();
                    }
                    Trial {
                        number: n + 1,
                        values: parameters.iter().map(|p| p.key.clone()).zip(values).collect(),
                    }
                })
                .collect())
        }
        Method::Random => {
            let count = config
                .trials
                .context("method = \"random\" needs sweep.trials, the number of trials to draw")?;
            Ok((1..=count)
                .map(|number| Trial {
                    number,
                    values: parameters
                        .iter()
                        .map(|p| {
                            // Keyed by the key's name, not its place among the keys: adding or
                            // removing another key keeps this one's draws.
                            let mut rng = SplitMix64::keyed(&[config.seed, number as u64, name_hash(&p.key)]);
                            (p.key.clone(), draw(&p.space, &mut rng))
                        })
                        .collect(),
                })
                .collect())
        }
    }
}

/// FNV-1a of a key's name: the same number on every machine and build.
fn name_hash(key: &str) -> u64 {
    key.bytes().fold(0xCBF2_9CE4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01B3)
    })
}

/// One random value from a space.
fn draw(space: &Space, rng: &mut SplitMix64) -> toml::Value {
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    match space {
        Space::Values(values) => values[((u * values.len() as f64) as usize).min(values.len() - 1)].clone(),
        &Space::Range { min, max, log, integer } => {
            if integer {
                // Every whole number in [min, max] equally likely (log: equally likely per decade).
                let (lo, hi) = (min - 0.5, max + 0.5);
                let x = if log {
                    // min >= 1 here, so lo > 0.
                    (lo.ln() + u * (hi.ln() - lo.ln())).exp()
                } else {
                    lo + u * (hi - lo)
                };
                toml::Value::Integer(x.round().clamp(min, max) as i64)
            } else {
                let x = if log {
                    (min.ln() + u * (max.ln() - min.ln())).exp()
                } else {
                    min + u * (max - min)
                };
                // Four significant digits: readable in tables, exact in files.
                let rounded: f64 = format!("{x:.3e}").parse().expect("a formatted float parses");
                toml::Value::Float(rounded.clamp(min, max))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_text(table: &str) -> anyhow::Result<Vec<Trial>> {
        let config: SweepConfig = toml::from_str(table)?;
        expand(&config, &parse_parameters(&config.parameters)?)
    }

    #[test]
    fn a_sweep_key_below_the_parameters_header_is_told_where_it_belongs() {
        // SWEEP_KEYS are [sweep]'s keys: a field added to SweepConfig fails to compile here.
        let every = SweepConfig {
            method: Method::Random,
            trials: Some(2),
            seed: 1,
            metric: super::super::Metric::KnnGain,
            goal: Some(super::super::Goal::Max),
            prune: super::super::Prune::Median,
            prune_after: Some(2),
            parameters: toml::Table::new(),
        };
        let table = toml::Table::try_from(&every).unwrap();
        let mut keys: Vec<&str> = table
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "parameters")
            .collect();
        let mut expected = SWEEP_KEYS.to_vec();
        keys.sort();
        expected.sort();
        assert_eq!(keys, expected);
        let below = "[parameters]\n\"optimizer.lr\" = [0.1]\nmetric = \"knn_gain\"\n";
        let error = format!("{:#}", expand_text(below).unwrap_err());
        assert!(
            error.contains("metric is a key of [sweep], but it is written below the [sweep.parameters] header"),
            "{error}"
        );
    }

    #[test]
    fn a_grid_is_every_combination_last_key_fastest() {
        let trials = expand_text("[parameters]\n\"optimizer.lr\" = [0.1, 0.2]\nschedule.epochs = [1, 2, 3]\n").unwrap();
        let points: Vec<String> = trials.iter().map(|t| format!("{} {}", t.id(), t.describe())).collect();
        assert_eq!(
            points,
            [
                "trial-001 optimizer.lr = 0.1, schedule.epochs = 1",
                "trial-002 optimizer.lr = 0.1, schedule.epochs = 2",
                "trial-003 optimizer.lr = 0.1, schedule.epochs = 3",
                "trial-004 optimizer.lr = 0.2, schedule.epochs = 1",
                "trial-005 optimizer.lr = 0.2, schedule.epochs = 2",
                "trial-006 optimizer.lr = 0.2, schedule.epochs = 3",
            ]
        );
        assert_eq!(trials[3].overrides(), ["optimizer.lr=0.2", "schedule.epochs=1"]);
        let capped =
            expand_text("trials = 4\n[parameters]\n\"optimizer.lr\" = [0.1, 0.2]\nschedule.epochs = [1, 2, 3]\n")
                .unwrap();
        assert_eq!(capped[..], trials[..4]);
    }

    #[test]
    fn random_draws_are_in_range_reproducible_and_stable_under_a_bigger_budget() {
        let table = "method = \"random\"\ntrials = TRIALS\nseed = 4\n[parameters]\n\
                     \"optimizer.lr\" = { min = 1e-3, max = 1.0, log = true }\n\
                     \"schedule.epochs\" = { min = 1, max = 5 }\n\"optimizer.nesterov\" = [true, false]\n";
        let a = expand_text(&table.replace("TRIALS", "40")).unwrap();
        let b = expand_text(&table.replace("TRIALS", "60")).unwrap();
        assert_eq!(a[..], b[..40], "trial n does not depend on the budget");
        let mut small_lr = 0;
        let mut epochs_seen = std::collections::BTreeSet::new();
        let mut nesterov_seen = std::collections::BTreeSet::new();
        for t in &b {
            let get = |k: &str| t.values.iter().find(|(key, _)| key == k).unwrap().1.clone();
            let lr = get("optimizer.lr").as_float().unwrap();
            assert!((1e-3..=1.0).contains(&lr), "{lr}");
            assert_eq!(format!("{lr:.3e}").parse::<f64>().unwrap(), lr, "4 significant digits");
            small_lr += usize::from(lr < 0.0316);
            let epochs = get("schedule.epochs").as_integer().unwrap();
            assert!((1..=5).contains(&epochs));
            epochs_seen.insert(epochs);
            nesterov_seen.insert(get("optimizer.nesterov").as_bool().unwrap());
        }
        // Log-uniform: about half the draws below the geometric midpoint 10^-1.5.
        assert!((15..=45).contains(&small_lr), "{small_lr} of 60 below 0.0316");
        assert_eq!(epochs_seen.len(), 5, "every integer drawn: {epochs_seen:?}");
        assert_eq!(nesterov_seen.len(), 2);
        let other_seed = expand_text(&table.replace("TRIALS", "40").replace("seed = 4", "seed = 5")).unwrap();
        assert_ne!(other_seed, a);
        // A key added (before the others in order) leaves the others' draws as they were.
        let more = expand_text(&table.replace("TRIALS", "40").replace(
            "[parameters]\n",
            "[parameters]\n\"byol.tau_base\" = { min = 0.9, max = 0.999 }\n",
        ))
        .unwrap();
        for (with, without) in more.iter().zip(&a) {
            let others: Vec<_> = with
                .values
                .iter()
                .filter(|(key, _)| key != "byol.tau_base")
                .cloned()
                .collect();
            assert_eq!(others, without.values);
        }
    }

    #[test]
    fn bad_parameter_spaces_are_explained() {
        let error = |table: &str| format!("{:#}", expand_text(table).unwrap_err());
        let e = error("[parameters]\n\"optimizer.lr\" = { min = 0.1, max = 1.0 }\n");
        assert!(e.contains("optimizer.lr") && e.contains("random"), "{e}");
        let e = error("method = \"random\"\n[parameters]\n\"optimizer.lr\" = [1]\n");
        assert!(e.contains("sweep.trials"), "{e}");
        let e = error("[parameters]\n\"optimizer.lr\" = []\n");
        assert!(e.contains("empty list"), "{e}");
        let e = error("[parameters]\n\"optimizer.lr\" = 0.1\n");
        assert!(e.contains("neither a list"), "{e}");
        let e = error(
            "method = \"random\"\ntrials = 2\n[parameters]\n\"optimizer.lr\" = { min = 0.0, max = 1.0, log = true }\n",
        );
        assert!(e.contains("min > 0"), "{e}");
        let e = error("method = \"random\"\ntrials = 2\n[parameters]\n\"optimizer.lr\" = { min = 1.0, max = 0.5 }\n");
        assert!(e.contains("must be below"), "{e}");
        let e = error(
            "method = \"random\"\ntrials = 2\n[parameters]\n\"optimizer.lr\" = { min = 0.1, max = 1.0, step = 2 }\n",
        );
        assert!(e.contains("'step'"), "{e}");
        let e = error("[parameters]\n");
        assert!(e.contains("empty"), "{e}");
        let e = error("trials = 0\n[parameters]\na = [1]\n");
        assert!(e.contains("nothing to run"), "{e}");
        let e = error("[parameters]\n\"optimizer.lr\" = [0.5, 1.0]\n[parameters.optimizer]\nlr = [0.1, 0.2]\n");
        assert!(e.contains("names optimizer.lr twice"), "{e}");
    }
}
