//! The crate's shape, read from its sources (`docs/design.md` draws it): each layer imports
//! only the layers below it, the core has no feature switches, long files are mostly tests or
//! docs, and no two public constants share a name.
//!
//! Deliberately plain text matching: a `crate::module` path on a line that is not a comment is
//! an import of that module. Simple enough to trust, exact enough to fail on the first climb.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Where each top-level module of `src/` sits. A lower number is a lower layer.
const LAYERS: &[(&str, Layer)] = &[
    // Token values: what a token is, with nothing of the crate below them. The clock is here
    // because records, throttles and the client's backoff all read time and nothing else.
    ("base62", Layer::TokenValues),
    ("clock", Layer::TokenValues),
    ("format", Layer::TokenValues),
    ("id", Layer::TokenValues),
    ("name", Layer::TokenValues),
    ("record", Layer::TokenValues),
    ("scheme", Layer::TokenValues),
    ("scope", Layer::TokenValues),
    ("secret", Layer::TokenValues),
    ("store", Layer::Stores),
    ("audit", Layer::Core),
    ("authenticator", Layer::Core),
    ("error", Layer::Core),
    ("flusher", Layer::Core),
    ("issuer", Layer::Core),
    ("last_used", Layer::Core),
    ("policy", Layer::Core),
    ("verifier", Layer::Core),
    ("jwt", Layer::PlugIns),
    ("rate_limit", Layer::PlugIns),
    ("middleware", Layer::FrontEnds),
    ("management", Layer::FrontEnds),
    ("oauth", Layer::FrontEnds),
    ("client", Layer::ClientSide),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    TokenValues,
    Stores,
    Core,
    PlugIns,
    FrontEnds,
    ClientSide,
}

fn layer_of(module: &str) -> Option<Layer> {
    LAYERS
        .iter()
        .find(|(name, _)| *name == module)
        .map(|(_, layer)| *layer)
}

/// Whether code in `from` may name `to`.
fn may_use(from: &str, to: &str) -> bool {
    if from == to {
        return true;
    }
    let (Some(a), Some(b)) = (layer_of(from), layer_of(to)) else {
        return false;
    };
    match a {
        // The client side runs in another process: it needs only what a token is.
        Layer::ClientSide => b == Layer::TokenValues,
        // Plug-ins are independent of each other: each one uses what is below.
        Layer::PlugIns => b < Layer::PlugIns,
        // Front ends use what they configure; the HTTP layer is one the others build on, and
        // it builds on none of them.
        Layer::FrontEnds => b < Layer::FrontEnds || to == "middleware",
        // Within the lower layers, modules of one layer may use each other.
        _ => b <= a,
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/` except the binary's, with its top-level module.
fn sources() -> Vec<(String, PathBuf)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&src(), &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|path| {
            let rel = path.strip_prefix(src()).unwrap().to_path_buf();
            let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
            let module = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
            (module != "lib" && module != "bin").then_some((module, path))
        })
        .collect()
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with("//")
}

/// The modules named by `crate::name` on one line of code.
fn crate_paths(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        // `apitoken_crate::x` or `$crate::x` are not this crate's paths.
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

/// Items re-exported at the crate root, which any module may name as `crate::Item`: they
/// resolve to the module that defines them, read from `lib.rs`'s `pub use` lines.
fn root_items() -> BTreeMap<String, String> {
    let lib = fs::read_to_string(src().join("lib.rs")).unwrap();
    let mut items = BTreeMap::new();
    let mut statement = String::new();
    for line in lib.lines().filter(|l| !is_comment(l)) {
        let line = line.trim();
        if statement.is_empty() && !line.starts_with("pub use ") {
            continue;
        }
        statement.push_str(line);
        statement.push(' ');
        if !line.ends_with(';') {
            continue;
        }
        let body = statement
            .trim_start_matches("pub use ")
            .trim_end()
            .trim_end_matches(';');
        let (module, names) = match body.split_once("::") {
            Some((module, names)) => (module.to_owned(), names.to_owned()),
            None => (String::new(), String::new()),
        };
        for name in names.replace(['{', '}'], ",").split(',') {
            let name = name.trim();
            let name = name.rsplit("::").next().unwrap_or(name);
            let name = name.rsplit(" as ").next().unwrap_or(name).trim();
            if !name.is_empty() {
                items.insert(name.to_owned(), module.clone());
            }
        }
        statement.clear();
    }
    items
}

#[test]
fn every_module_has_a_layer() {
    let unplaced: Vec<String> = sources()
        .into_iter()
        .map(|(module, _)| module)
        .filter(|module| layer_of(module).is_none())
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules missing from LAYERS: {unplaced:?}"
    );
}

#[test]
fn no_module_imports_a_layer_above_it() {
    let roots = root_items();
    let mut climbs = Vec::new();
    for (module, path) in sources() {
        let text = fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            if is_comment(line) {
                continue;
            }
            for name in crate_paths(line) {
                // `crate::Verifier` names the module that defines it.
                let target = roots.get(&name).cloned().unwrap_or(name);
                if !may_use(&module, &target) {
                    let rel = path.strip_prefix(src()).unwrap().display().to_string();
                    climbs.push(format!("src/{rel}:{}: {module} uses {target}", n + 1));
                }
            }
        }
    }
    assert!(
        climbs.is_empty(),
        "imports that climb a layer:\n{}",
        climbs.join("\n")
    );
}

#[test]
fn the_core_and_what_is_below_have_no_feature_switches() {
    let mut switches = Vec::new();
    for (module, path) in sources() {
        if layer_of(&module).is_some_and(|l| l > Layer::Core) || module == "store" {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            if !is_comment(line) && line.contains("feature = \"") {
                let rel = path.strip_prefix(src()).unwrap().display().to_string();
                switches.push(format!("src/{rel}:{}", n + 1));
            }
        }
    }
    assert!(
        switches.is_empty(),
        "feature switches in the core: {switches:?}"
    );
}

/// Lines of a file that are docs, comments, or unit tests (from `#[cfg(test)]` on).
fn docs_and_tests(text: &str) -> usize {
    let mut in_tests = false;
    text.lines()
        .filter(|line| {
            in_tests |= line.starts_with("#[cfg(test)]");
            in_tests || is_comment(line)
        })
        .count()
}

#[test]
fn a_long_file_is_mostly_tests_or_docs() {
    let mut long = Vec::new();
    for (_, path) in sources() {
        let text = fs::read_to_string(&path).unwrap();
        let total = text.lines().count();
        let explained = docs_and_tests(&text);
        if total > 700 && explained * 2 < total {
            let rel = path.strip_prefix(src()).unwrap().display().to_string();
            long.push(format!(
                "src/{rel}: {total} lines, {explained} of docs and tests"
            ));
        }
    }
    assert!(long.is_empty(), "files to split:\n{}", long.join("\n"));
}

#[test]
fn no_two_public_constants_share_a_name() {
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, path) in sources() {
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            let Some(rest) = line.strip_prefix("pub const ") else {
                continue;
            };
            if rest.starts_with("fn ") {
                continue;
            }
            // A deprecated alias keeps an old path working for one release.
            // Its attributes and docs are the lines above it, back to the previous item.
            let mut above = lines[..n].iter().rev().take_while(|l| {
                let l = l.trim_end();
                !(l.is_empty() || l.ends_with(';') || l.ends_with('}'))
            });
            if above.any(|l| l.starts_with("#[deprecated")) {
                continue;
            }
            let name: String = rest.chars().take_while(|c| *c != ':').collect();
            let rel = path.strip_prefix(src()).unwrap().display().to_string();
            seen.entry(name).or_default().push(rel);
        }
    }
    let shared: Vec<String> = seen
        .into_iter()
        .filter(|(_, places)| places.len() > 1)
        .map(|(name, places)| format!("{name}: {places:?}"))
        .collect();
    assert!(
        shared.is_empty(),
        "public constants sharing a name: {shared:?}"
    );
}

// The checks above must be able to fail: each rule on a case it must refuse.
#[test]
fn the_rules_refuse_what_they_should() {
    assert!(
        !may_use("verifier", "rate_limit"),
        "core may not use a plug-in"
    );
    assert!(
        !may_use("jwt", "oauth"),
        "a plug-in may not use a front end"
    );
    assert!(!may_use("jwt", "rate_limit"), "plug-ins are independent");
    assert!(
        !may_use("client", "middleware"),
        "the client side needs token values only"
    );
    assert!(!may_use("client", "store"));
    assert!(
        !may_use("middleware", "oauth"),
        "the HTTP layer builds on no other front end"
    );
    assert!(!may_use("store", "verifier"));
    assert!(!may_use("format", "store"));
    assert!(!may_use("record", "last_used"));
    assert!(may_use("oauth", "middleware"));
    assert!(may_use("oauth", "jwt"));
    assert!(may_use("verifier", "store"));
    assert!(may_use("format", "base62"));
    assert_eq!(
        crate_paths("use crate::verifier::{Principal};"),
        ["verifier"]
    );
    assert_eq!(
        crate_paths("let x = $crate::a::b; other_crate::c"),
        Vec::<String>::new()
    );
    assert_eq!(
        docs_and_tests("fn a() {}\n// why\n#[cfg(test)]\nmod tests {\n}\n"),
        4
    );
    let roots = root_items();
    assert_eq!(roots.get("Verifier").map(String::as_str), Some("verifier"));
    assert_eq!(roots.get("Policy").map(String::as_str), Some("policy"));
}
