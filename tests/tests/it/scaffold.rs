//! What a plugin author starts from works as documented: `rekon new` makes a crate that
//! passes its own unit tests natively and its own cases compiled, and every code block
//! of `docs/plugin-guide.md` builds, passes and runs.
//!
//! Both build real crates outside rekon's workspace with cargo, in their own target
//! directory (`$CARGO_TARGET_DIR/scaffold`, shared between the two and kept between
//! runs), with rekon's `Cargo.lock` copied in so they resolve the versions rekon is tested
//! with, without the network.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use rekon_host::testing::case;
use rekon_tests::binary::rekon;
use rekon_tests::plugins::{target_dir, workspace};

/// Where the generated crates build: kept between runs, so only the first is cold.
pub(crate) fn scaffold_target() -> PathBuf {
    target_dir().join("scaffold")
}

pub(crate) fn cargo(dir: &Path) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(dir)
        .env("CARGO_TARGET_DIR", scaffold_target())
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    cmd
}

/// Runs `cmd`; panics with its output unless it succeeds. Returns stdout and stderr.
pub(crate) fn run(cmd: &mut Command, what: &str) -> String {
    let started = Instant::now();
    let out: Output = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    eprintln!("scaffold: {what}: {:.1?}", started.elapsed());
    text
}

/// Pins the new crate to the dependency versions rekon itself builds with.
pub(crate) fn copy_lock(dir: &Path) {
    std::fs::copy(workspace().join("Cargo.lock"), dir.join("Cargo.lock"))
        .expect("copying rekon's Cargo.lock");
}

fn wasm(crate_name: &str) -> PathBuf {
    scaffold_target()
        .join("wasm32-wasip2")
        .join("release")
        .join(format!("{}.wasm", crate_name.replace('-', "_")))
}

/// The number `N` in cargo test's `test result: ok. N passed` for the unit tests.
fn unit_tests_passed(output: &str) -> usize {
    output
        .lines()
        .find_map(|l| l.strip_prefix("test result: ok. "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `test result: ok.` line in:\n{output}"))
}

/// `rekon new NAME --kind KIND` makes a crate with `files` whose 3 unit tests pass
/// natively and whose 2 cases pass compiled, in rekon's sandbox.
fn scaffold_passes(name: &str, kind: &str, files: &[&str]) {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    let created = run(
        Command::new(rekon())
            .args(["new", name, "--kind", kind, "--dir"])
            .arg(&dir),
        "rekon new",
    );
    assert!(
        created.contains(&format!("created plugin {name}")),
        "{created}"
    );
    for file in files {
        assert!(dir.join(file).is_file(), "{file} missing: {created}");
    }
    assert_eq!(
        dir.join("crd.yaml").exists(),
        files.contains(&"crd.yaml"),
        "a CRD only for a custom resource: {created}"
    );
    copy_lock(&dir);

    let tested = run(cargo(&dir).arg("test"), &format!("cargo test ({name})"));
    assert_eq!(unit_tests_passed(&tested), 3, "{tested}");

    run(
        cargo(&dir).args(["build", "--release", "--target", "wasm32-wasip2"]),
        &format!("cargo build --target wasm32-wasip2 ({name})"),
    );
    let report = run(
        Command::new(rekon())
            .arg("test")
            .arg(wasm(name))
            .arg(dir.join("cases")),
        &format!("rekon test ({name})"),
    );
    assert!(report.contains("2 passed, 0 failed"), "{report}");
    eprintln!(
        "scaffold: rekon new {kind} → cases pass: {:.1?}",
        started.elapsed()
    );
}

#[test]
fn a_new_plugin_passes_its_unit_tests_natively_and_its_cases_compiled() {
    scaffold_passes(
        "hello-world",
        "example.dev/v1/Hello",
        &[
            "Cargo.toml",
            "README.md",
            "crd.yaml",
            "src/lib.rs",
            "src/tests.rs",
        ],
    );
}

#[test]
fn a_new_decorator_of_a_built_in_namespace_passes_its_unit_tests_and_its_cases_compiled() {
    scaffold_passes(
        "decorator-x",
        "v1/Namespace",
        &["Cargo.toml", "README.md", "src/lib.rs", "src/tests.rs"],
    );
}

#[test]
fn a_new_decorator_of_a_built_in_deployment_passes_its_unit_tests_and_its_cases_compiled() {
    scaffold_passes(
        "deploy-deco",
        "apps/v1/Deployment",
        &["Cargo.toml", "README.md", "src/lib.rs", "src/tests.rs"],
    );
}

#[test]
fn rekon_new_refuses_a_bad_name_and_a_non_empty_directory_without_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(rekon())
        .current_dir(tmp.path())
        .args(["new", "Hello_World"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid plugin name \"Hello_World\""),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);

    std::fs::write(tmp.path().join("notes.txt"), "mine").unwrap();
    let out = Command::new(rekon())
        .args(["new", "hello", "--dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is not empty"), "{stderr}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

/// A fenced code block of the guide: its info string's language and file, its text, and
/// the line it starts on.
#[derive(Debug)]
struct Block {
    lang: String,
    file: Option<String>,
    text: String,
    line: usize,
}

fn blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in markdown.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        match (&mut open, fence) {
            (None, true) => {
                let info = line.trim_start().trim_start_matches('`');
                let mut words = info.split_whitespace();
                open = Some(Block {
                    lang: words.next().unwrap_or_default().to_owned(),
                    file: words.next().map(str::to_owned),
                    text: String::new(),
                    line: i + 1,
                });
            }
            (Some(_), true) => blocks.extend(open.take()),
            (Some(block), false) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (None, false) => {}
        }
    }
    assert!(open.is_none(), "an unclosed code block: {open:?}");
    blocks
}

/// The files the guide's blocks make, and its shell commands.
#[derive(Default)]
struct Guide {
    files: Vec<(String, String)>,
    commands: Vec<String>,
    tests: usize,
    cases: usize,
}

fn read_guide() -> Guide {
    let path = workspace().join("docs/plugin-guide.md");
    let markdown = std::fs::read_to_string(&path).expect("docs/plugin-guide.md");
    let mut guide = Guide::default();
    for block in blocks(&markdown) {
        let at = format!("docs/plugin-guide.md:{}", block.line);
        match (block.lang.as_str(), block.file.as_deref()) {
            ("rust", Some(file @ ("src/lib.rs" | "src/tests.rs"))) => {
                guide.tests += block.text.matches("#[test]").count();
                match guide.files.iter_mut().find(|(f, _)| f == file) {
                    Some((_, text)) => text.push_str(&format!("\n{}", block.text)),
                    None => guide.files.push((file.to_owned(), block.text)),
                }
            }
            ("yaml", Some(file)) if file.starts_with("cases/") => {
                case::parse(&block.text, Path::new(file))
                    .unwrap_or_else(|e| panic!("{at}: not a rekon test case: {e}"));
                guide.cases += 1;
                guide.files.push((file.to_owned(), block.text));
            }
            ("sh", None) => {
                for line in block.text.lines() {
                    let command = line.split('#').next().unwrap_or_default().trim();
                    if !command.is_empty() {
                        guide.commands.push(command.to_owned());
                    }
                }
            }
            _ => panic!(
                "{at}: a ```{} {} block: the guide's blocks must be `rust src/lib.rs`, \
                 `rust src/tests.rs`, `yaml cases/NAME.yaml` or `sh`, so that this test can \
                 build, run or execute them",
                block.lang,
                block.file.unwrap_or_default()
            ),
        }
    }
    guide
}

#[test]
fn every_code_block_of_the_plugin_guide_builds_passes_and_runs() {
    let started = Instant::now();
    let guide = read_guide();
    assert!(
        guide.tests > 0 && guide.cases > 0 && !guide.commands.is_empty(),
        "the guide lost its examples"
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut cwd = tmp.path().to_owned();
    let mut ran = Vec::new();
    for command in &guide.commands {
        let words: Vec<&str> = command.split_whitespace().collect();
        match words.as_slice() {
            ["cd", dir] => cwd = cwd.join(dir),
            ["rekon", "new", ..] => {
                run(
                    Command::new(rekon()).args(&words[1..]).current_dir(&cwd),
                    command,
                );
                let name = words[2];
                let dir = cwd.join(name);
                // The guide's crate: the generated one with the guide's code and cases.
                std::fs::remove_dir_all(dir.join("cases")).unwrap();
                for (file, text) in &guide.files {
                    let path = dir.join(file);
                    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    std::fs::write(&path, text).unwrap();
                }
                copy_lock(&dir);
            }
            ["rekon", args @ ..] => {
                // `target/` in the guide is this test's target directory.
                let args = args.iter().map(|a| match a.strip_prefix("target/") {
                    Some(rest) => scaffold_target().join(rest).into_os_string(),
                    None => a.into(),
                });
                let out = run(Command::new(rekon()).args(args).current_dir(&cwd), command);
                if args_are(&words, "test") {
                    let want = format!("{} passed, 0 failed", guide.cases);
                    assert!(out.contains(&want), "{command}:\n{out}");
                }
            }
            ["cargo", args @ ..] => {
                let out = run(cargo(&cwd).args(args), command);
                if args == ["test"] {
                    assert_eq!(unit_tests_passed(&out), guide.tests, "{out}");
                }
            }
            _ => panic!(
                "the guide's shell blocks may use only `rekon`, `cargo` and `cd`: {command:?}"
            ),
        }
        ran.push(command.clone());
    }
    for needed in ["cargo test", "rekon test"] {
        assert!(
            ran.iter().any(|c| c.starts_with(needed)),
            "the guide never runs `{needed}`: {ran:?}"
        );
    }
    eprintln!(
        "scaffold: the guide's {} commands: {:.1?}",
        ran.len(),
        started.elapsed()
    );
}

fn args_are(words: &[&str], subcommand: &str) -> bool {
    words.get(1) == Some(&subcommand)
}
