//! The documentation links only inside the repository: every Markdown link of the
//! project's own documents names a file or directory of the checkout that exists, and no
//! document holds a URL (a reference to outside documentation is plain text).

use std::path::{Component, Path, PathBuf};

use rekon_tests::plugins::workspace;

/// The project's Markdown documents, relative to the workspace root (templates for
/// generated crates excluded: they are written into the user's crate).
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut docs = vec![
        PathBuf::from("README.md"),
        PathBuf::from("TESTING.md"),
        PathBuf::from("BENCHMARKS.md"),
        PathBuf::from("fuzz/README.md"),
    ];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/ lists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(path.strip_prefix(root).unwrap().to_owned());
        }
    }
    docs
}

/// The targets of the inline links `[text](target)` in `markdown`, with their line.
fn link_targets(markdown: &str) -> Vec<(usize, String)> {
    let mut targets = Vec::new();
    for (i, line) in markdown.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            targets.push((i + 1, rest[..end].trim().to_owned()));
            rest = &rest[end..];
        }
    }
    targets
}

/// `path` with `.` and `..` resolved lexically; `None` if it climbs above its start.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(c) => out.push(c),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[test]
fn readme_and_docs_link_only_to_files_inside_the_repository() {
    let root = workspace();
    let mut problems = Vec::new();
    for doc in documents(&root) {
        let text = std::fs::read_to_string(root.join(&doc))
            .unwrap_or_else(|e| panic!("reading {}: {e}", doc.display()));
        for (i, line) in text.lines().enumerate() {
            if line.contains("://") || line.contains("mailto:") {
                problems.push(format!("{}:{}: a URL: {line}", doc.display(), i + 1));
            }
        }
        for (line, target) in link_targets(&text) {
            let file = target.split('#').next().unwrap_or_default();
            if file.is_empty() {
                continue; // an anchor in the same document
            }
            let dir = doc.parent().unwrap_or(Path::new(""));
            match normalize(&dir.join(file)) {
                None => problems.push(format!(
                    "{}:{line}: {target} points outside the repository",
                    doc.display()
                )),
                Some(inside) if !root.join(&inside).exists() => problems.push(format!(
                    "{}:{line}: {target} does not exist ({})",
                    doc.display(),
                    inside.display()
                )),
                Some(_) => {}
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn links_are_found_and_a_link_climbing_out_is_caught() {
    let text = "see [the design](docs/design.md) and [x](../shared/DESIGN.md#a), [y](#here)";
    let targets: Vec<String> = link_targets(text).into_iter().map(|(_, t)| t).collect();
    assert_eq!(
        targets,
        ["docs/design.md", "../shared/DESIGN.md#a", "#here"]
    );
    assert_eq!(normalize(Path::new("../shared/DESIGN.md")), None);
    assert_eq!(
        normalize(Path::new("docs/../TESTING.md")),
        Some(PathBuf::from("TESTING.md"))
    );
}
