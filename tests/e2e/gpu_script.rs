//! `tests/gpu/checks.sh` rehearsed on the CPU. A GPU machine is at hand rarely and for minutes, and
//! the script runs there without a Rust toolchain to fix it: a flag, key or experiment file it
//! names that the binary no longer takes would cost that time. Every command the script gives
//! `byol-run` is run here, small: the same subcommand, flags, experiment file and `--set` keys,
//! with CUDA-only values in their CPU form (the device, fp16, CUDA graphs) and sizes shrunk
//! (batch, view side, timed steps). A training command is checked by `validate`, which builds
//! what the run would; `eval knn` (which needs a trained run) by its flags.

use std::collections::BTreeMap;
use std::path::Path;

const SCRIPT: &str = "tests/gpu/checks.sh";

/// Lines of `script` with continuations joined and comments left out.
fn lines(script: &str) -> Vec<String> {
    script
        .replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// The script's `NAME=value` and `NAME="value"` assignments.
fn variables(lines: &[String]) -> BTreeMap<String, String> {
    lines
        .iter()
        .filter_map(|line| {
            let (name, value) = line.split_once('=')?;
            let is_name = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            is_name.then(|| (name.to_string(), value.trim_matches('"').to_string()))
        })
        .collect()
}

/// `text` with `$NAME` and `${NAME}` replaced from `vars`, one at a time until none is left; a
/// name not in `vars` fails the test, naming it.
fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut text = text.to_string();
    // A bound on substitutions, for a variable whose value names itself.
    for _ in 0..100 {
        let Some(at) = text.find('$') else {
            return text;
        };
        let rest = &text[at + 1..];
        let (name, len) = match rest.strip_prefix('{') {
            Some(braced) => {
                let end = braced.find('}').expect("closing brace");
                (&braced[..end], end + 2)
            }
            None => {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                (&rest[..end], end)
            }
        };
        let value = vars
            .get(name)
            .unwrap_or_else(|| panic!("{SCRIPT}: a command uses ${name}, which this rehearsal does not know"));
        text = format!("{}{}{}", &text[..at], value, &text[at + 1 + len..]);
    }
    assert!(
        !text.contains('$'),
        "{SCRIPT}: a variable expands into itself in {text}"
    );
    text
}

/// Words as the shell splits them: quotes group and are removed.
fn words(text: &str) -> Vec<String> {
    let (mut words, mut word, mut quote, mut started) = (Vec::new(), String::new(), None, false);
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => (quote, started) = (Some(c), true),
            (None, c) if c.is_whitespace() => {
                if started || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                started = false;
            }
            (None, c) => word.push(c),
        }
    }
    if started || !word.is_empty() {
        words.push(word);
    }
    words
}

/// The command text of `line` after `marker`, up to a redirection or the end of the command.
fn command_after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    let start = line.find(marker)? + marker.len();
    let rest = &line[start..];
    let end = rest.find(['>', '|', ';']).unwrap_or(rest.len());
    let command = rest[..end].trim_end();
    // `2>&1`, `2>>`: the file descriptor's number belongs to the redirection.
    let command = match rest[end..].starts_with('>') {
        true => command.strip_suffix(" 2").unwrap_or(command),
        false => command,
    };
    Some(command.trim())
}

/// Every `byol-run` command of the script (`$B ...`), expanded, once each.
fn byol_run_commands(script: &str, runs: &Path) -> Vec<Vec<String>> {
    let lines = lines(script);
    let mut vars = variables(&lines);
    vars.insert("RUNS".into(), runs.display().to_string());
    vars.insert("precision".into(), "bf16".into());
    let mut commands: Vec<Vec<String>> = Vec::new();
    for line in &lines {
        if let Some(command) = command_after(line, "$B ") {
            let command = words(&expand(command, &vars));
            if !commands.contains(&command) {
                commands.push(command);
            }
        }
    }
    commands
}

/// `command` in the form the CPU runs, small: CUDA-only values in their CPU form, sizes shrunk.
fn on_the_cpu(command: &[String], python: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in command {
        let after = out.last().map(String::as_str);
        let word = match (after, word.split_once('=')) {
            (Some("--batch"), _) => "2".into(),
            (Some("--res"), _) => "32".into(),
            (Some("--warmup"), _) => "1".into(),
            (Some("--iters"), _) => "1".into(),
            (Some("--against-torch"), _) => python.into(),
            (Some("--set"), Some(("run.device", _))) => "run.device=cpu".into(),
            (Some("--set"), Some(("run.precision", "fp16"))) => "run.precision=bf16".into(),
            (Some("--set"), Some(("run.cuda_graphs", _))) => "run.cuda_graphs=false".into(),
            (Some("--set"), Some(("schedule.batch_size", _))) => "schedule.batch_size=4".into(),
            _ => word.clone(),
        };
        out.push(word);
    }
    let timed = ["step", "e2e", "optim"];
    if out[0] == "bench" && timed.contains(&out[1].as_str()) {
        for (flag, value) in [("--warmup", "1"), ("--iters", "1")] {
            if !out.iter().any(|w| w == flag) {
                out.extend([flag.to_string(), value.to_string()]);
            }
        }
        if out[1] == "optim" {
            out.extend(["--repeats", "1", "--small-tensors", "10"].map(String::from));
        }
    }
    out
}

/// The subcommand path of `command` (`bench step`, `eval knn`, `doctor`, or `train` for an
/// experiment file).
fn subcommand(command: &[String]) -> Vec<String> {
    match command[0].as_str() {
        "bench" | "eval" => command[..2].to_vec(),
        word if word.ends_with(".toml") => vec!["train".into()],
        word => vec![word.into()],
    }
}

/// Every `--flag` of `command` is one its subcommand's help lists.
fn assert_flags_known(dir: &Path, command: &[String]) {
    let path = subcommand(command);
    let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
    args.push("--help");
    let help = super::byol_run(dir, &args);
    let help_text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success(), "{}", super::text(&help));
    for flag in command.iter().filter(|w| w.starts_with("--")) {
        let flag = flag.split('=').next().expect("split gives one part");
        assert!(
            help_text.contains(&format!("{flag} ")) || help_text.contains(&format!("{flag}\n")),
            "{SCRIPT}: `byol-run {}` has no {flag} (in: {})\n{help_text}",
            path.join(" "),
            command.join(" ")
        );
    }
}

/// What the rehearsal runs for `command`: the command itself, `validate` with its `--set`s for
/// a training run, or nothing for `eval` (checked by its flags only).
fn rehearsal(command: &[String]) -> Option<Vec<String>> {
    match subcommand(command)[0].as_str() {
        "train" => {
            let mut validate = vec!["validate".to_string(), command[0].clone()];
            for pair in command.windows(2).filter(|w| w[0] == "--set") {
                validate.extend(pair.iter().cloned());
            }
            Some(validate)
        }
        "eval" => None,
        _ => Some(command.to_vec()),
    }
}

#[test]
fn every_byol_run_command_of_the_gpu_script_runs_on_the_cpu() {
    let root = super::repo_root();
    let script = std::fs::read_to_string(root.join(SCRIPT)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    // The layout the script unpacks: CIFAR-10's ten class folders under data/cifar10-jpeg, with
    // images enough for a batch of 256 after `limit_per_class = 100` (validate lists them; copies
    // of one image will do).
    let classes = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
    for (split, per_class) in [("train", 100), ("test", 10)] {
        let folder = dir.path().join("data/cifar10-jpeg").join(split);
        super::random_pngs(&folder, &classes, 1);
        for class in classes {
            for i in 1..per_class {
                let class = folder.join(class);
                std::fs::copy(class.join("0.png"), class.join(format!("{i}.png"))).unwrap();
            }
        }
    }
    std::os::unix::fs::symlink(root.join("experiments"), dir.path().join("experiments")).unwrap();
    let python = byol_testkit::python();
    let commands = byol_run_commands(&script, &runs);
    let named: Vec<String> = commands.iter().map(|c| subcommand(c).join(" ")).collect();
    for expected in ["doctor", "train", "bench step", "bench e2e", "bench optim", "eval knn"] {
        assert!(
            named.iter().any(|n| n == expected),
            "{SCRIPT}: no `{expected}` command found; does the rehearsal still read the script? {named:?}"
        );
    }
    for on_the_gpu in &commands {
        let command = on_the_cpu(on_the_gpu, python.to_str().unwrap());
        assert_flags_known(dir.path(), &command);
        let Some(rehearsal) = rehearsal(&command) else {
            continue;
        };
        let args: Vec<&str> = rehearsal.iter().map(String::as_str).collect();
        let out = super::byol_run(dir.path(), &args);
        assert!(
            out.status.success(),
            "{SCRIPT}: `byol-run {}` (on the GPU: `{}`) failed\n{}",
            args.join(" "),
            on_the_gpu.join(" "),
            super::text(&out)
        );
    }
}

/// The script's PyTorch reference runs name scripts that exist, with flags they take.
#[test]
fn the_gpu_script_reference_commands_name_flags_their_scripts_take() {
    let root = super::repo_root();
    let script = std::fs::read_to_string(root.join(SCRIPT)).unwrap();
    let mut seen = 0;
    for line in lines(&script) {
        let Some(command) = command_after(&line, "python3 tests/reference/") else {
            continue;
        };
        let words = words(command);
        let path = root.join("tests/reference").join(&words[0]);
        assert!(path.is_file(), "{SCRIPT} runs {}, which is not there", path.display());
        let flags: Vec<&String> = words.iter().filter(|w| w.starts_with("--")).collect();
        if flags.is_empty() {
            continue;
        }
        let help = std::process::Command::new(byol_testkit::python())
            .arg(&path)
            .arg("--help")
            .output()
            .unwrap();
        let help_text = String::from_utf8_lossy(&help.stdout);
        assert!(help.status.success(), "{}", String::from_utf8_lossy(&help.stderr));
        for flag in flags {
            assert!(
                help_text.contains(flag.as_str()),
                "{} has no {flag}\n{help_text}",
                words[0]
            );
        }
        seen += 1;
    }
    assert!(seen > 0, "{SCRIPT}: no reference command found");
}

#[test]
fn script_words_split_and_expand_as_the_shell_does() {
    let vars = BTreeMap::from([
        ("A".to_string(), "x $B".to_string()),
        ("B".to_string(), "y".to_string()),
    ]);
    assert_eq!(expand("--set ${A}/z $B", &vars), "--set x y/z y");
    assert_eq!(
        words(r#"a "b c" 'optimizer={type="adamw", lr=1e-3}' "" d"#),
        ["a", "b c", "optimizer={type=\"adamw\", lr=1e-3}", "", "d"]
    );
    assert_eq!(
        command_after("check x 40 $B eval knn r --limit 1 >> \"$OUT/x.txt\" 2>&1", "$B "),
        Some("eval knn r --limit 1")
    );
    assert_eq!(command_after("  $B doctor 2>&1 > f", "$B "), Some("doctor"));
}
