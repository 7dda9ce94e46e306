//! The fuzz targets' entry points (`concierge::fuzzing`, shared with the cargo-fuzz crate in
//! `fuzz/`) on their seed corpora, then for a few seconds on deterministic mutations of them;
//! and every input the long cargo-fuzz runs found, kept as a regression test. A panic fails the
//! test and prints the input.
//!
//! `CONCIERGE_FUZZ_SECS` sets the seconds of mutation per target (default 2).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use concierge::fuzzing;

/// The shared real-world samples each target starts from (relative to the project root).
fn shared_seed_dirs(target: &str) -> &'static [&'static str] {
    match target {
        "email" => &["../shared/data/eml"],
        "shopify_webhook" | "importers" => &["../shared/data/webhooks/shopify"],
        "marketplace_webhook" => &[
            "../shared/data/webhooks/amazon-sp-api",
            "../shared/data/webhooks/ebay",
        ],
        "telegram_update" => &["../shared/data/webhooks/telegram"],
        _ => &[],
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files_under(dir: &Path, out: &mut Vec<Vec<u8>>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            files_under(&p, out);
        } else if let Ok(bytes) = std::fs::read(&p) {
            // The fuzzers cut inputs at 64 KiB; so does this run.
            if bytes.len() <= 64 * 1024 {
                out.push(bytes);
            }
        }
    }
}

/// A target's seeds: made by Concierge's code, committed under fuzz/seeds, and shared samples.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let mut out = fuzzing::seeds(target);
    files_under(&root().join("fuzz/seeds").join(target), &mut out);
    for dir in shared_seed_dirs(target) {
        let dir = root().join(dir);
        assert!(
            dir.is_dir(),
            "missing shared test data {} (the fuzz seeds for {target})",
            dir.display()
        );
        files_under(&dir, &mut out);
    }
    if out.is_empty() {
        out.push(Vec::new());
    }
    out
}

/// A small deterministic mutator (xorshift64*): bit flips, interesting bytes, syntax tokens,
/// deletions, duplications, splices with other seeds, truncation.
struct Mutator(u64);

const TOKENS: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"\n",
    b"\r\n",
    b"=",
    b"(",
    b")",
    b";",
    b"<",
    b">",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e999",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"\"\"",
    b"{}",
    b"[]",
    b"\\u0000",
    b"\\ud800",
    b"=?utf-8?b?",
    b"?=",
    b"--",
    b"\r\n\r\n",
    b"Content-Type: multipart/mixed; boundary=x\r\n",
    b"<blockquote>",
    b"</div>",
    b"&#x10FFFF;",
    b"&amp;",
    b"> ",
    b"On Mon, Jan 1, 2024, a <a@b.c> wrote:",
    b"sig1=",
    b":AAAA:",
    b"@method",
    b"\xff",
    b"\xc3",
    b"\xe2\x80\xae",
];

impl Mutator {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn mutate(&mut self, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..=self.below(4) {
            let len = out.len();
            match self.below(8) {
                0 if len > 0 => {
                    let i = self.below(len);
                    out[i] ^= 1 << self.below(8);
                }
                1 if len > 0 => {
                    let i = self.below(len);
                    out[i] = [0u8, 0xff, 0x7f, 0x80, b'"', b'\\', b'\n', b' '][self.below(8)];
                }
                2 => {
                    let t = TOKENS[self.below(TOKENS.len())];
                    let at = self.below(len + 1);
                    out.splice(at..at, t.iter().copied());
                }
                3 if len > 0 => {
                    let at = self.below(len);
                    let n = 1 + self.below((len - at).min(64));
                    out.drain(at..at + n);
                }
                4 if len > 0 => {
                    let at = self.below(len);
                    let n = 1 + self.below((len - at).min(256));
                    let piece = out[at..at + n].to_vec();
                    let to = self.below(len + 1);
                    out.splice(to..to, piece);
                }
                5 => {
                    let other = &corpus[self.below(corpus.len())];
                    if !other.is_empty() {
                        let from = self.below(other.len());
                        let n = 1 + self.below((other.len() - from).min(512));
                        let to = self.below(len + 1);
                        out.splice(to..to, other[from..from + n].iter().copied());
                    }
                }
                6 if len > 0 => out.truncate(self.below(len)),
                _ => {
                    let at = self.below(len + 1);
                    out.insert(at, self.next() as u8);
                }
            }
        }
        out.truncate(64 * 1024);
        out
    }
}

/// Runs `entry` on `input`; a panic fails the test with the input.
fn check(target: &str, entry: fn(&[u8]), input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| entry(input))).is_err() {
        // Kept for a regression test: copy it to fuzz/found/<target>/ once fixed.
        let dir = root().join("target/fuzz-failures");
        let path = dir.join(format!("{target}-{}", concierge::util::sha256_hex(input)));
        let saved = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, input));
        panic!(
            "fuzz target {target} panicked on an input of {} bytes (saved: {}, {saved:?}): {:?}",
            input.len(),
            path.display(),
            String::from_utf8_lossy(&input[..input.len().min(2000)])
        );
    }
}

fn budget() -> Duration {
    let secs = std::env::var("CONCIERGE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs.max(0.0))
}

fn fuzz(target: &str) {
    let Some(&(_, entry)) = fuzzing::TARGETS.iter().find(|(name, _)| *name == target) else {
        panic!("no fuzz target {target}");
    };
    let corpus = corpus(target);
    for input in &corpus {
        check(target, entry, input);
    }
    let mut rng = Mutator(0x9E37_79B9_7F4A_7C15 ^ target.len() as u64);
    let start = Instant::now();
    let mut runs = 0usize;
    while start.elapsed() < budget() {
        let seed = &corpus[rng.below(corpus.len())];
        let input = rng.mutate(seed, &corpus);
        check(target, entry, &input);
        runs += 1;
    }
    eprintln!(
        "{target}: {} seeds, {runs} mutated inputs in {:.1?}",
        corpus.len(),
        start.elapsed()
    );
    assert!(
        runs > 0 || budget().is_zero(),
        "{target}: no mutated input ran"
    );
}

#[test]
fn every_target_is_tested_here() {
    let names: Vec<&str> = fuzzing::TARGETS.iter().map(|(n, _)| *n).collect();
    let bins = std::fs::read_to_string(root().join("fuzz/Cargo.toml")).unwrap_or_default();
    for name in &names {
        assert!(
            bins.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no binary for {name}"
        );
    }
    assert_eq!(names.len(), 10);
}

#[test]
fn email() {
    fuzz("email");
}

#[test]
fn shopify_webhook() {
    fuzz("shopify_webhook");
}

#[test]
fn marketplace_webhook() {
    fuzz("marketplace_webhook");
}

#[test]
fn telegram_update() {
    fuzz("telegram_update");
}

#[test]
fn a2a_request() {
    fuzz("a2a_request");
}

#[test]
fn mcp_request() {
    fuzz("mcp_request");
}

#[test]
fn http_signature() {
    fuzz("http_signature");
}

#[test]
fn capability_token() {
    fuzz("capability_token");
}

#[test]
fn webchat_frame() {
    fuzz("webchat_frame");
}

#[test]
fn importers() {
    fuzz("importers");
}

/// Inputs that made a target panic (fuzz/found/<target>/), each a bug fixed since.
#[test]
fn found_inputs_stay_fixed() {
    let mut found = 0;
    for (target, entry) in fuzzing::TARGETS {
        let mut inputs = Vec::new();
        files_under(&root().join("fuzz/found").join(target), &mut inputs);
        for input in &inputs {
            check(target, *entry, input);
        }
        found += inputs.len();
    }
    assert!(found > 0, "fuzz/found holds no inputs");
}

/// Writes the generated seeds into fuzz/seeds/<target>/ (run when they change):
/// `cargo test --test it fuzz::write_seed_files -- --ignored`.
#[test]
#[ignore]
fn write_seed_files() {
    for (target, _) in fuzzing::TARGETS {
        let dir = root().join("fuzz/seeds").join(target);
        let seeds = fuzzing::seeds(target);
        if seeds.is_empty() {
            continue;
        }
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("{}: {e}", dir.display());
        }
        for (i, seed) in seeds.iter().enumerate() {
            let path = dir.join(format!("generated-{i}"));
            if let Err(e) = std::fs::write(&path, seed) {
                panic!("{}: {e}", path.display());
            }
        }
    }
}

/// The packages a lock file pins: `name version` pairs.
fn locked(path: &Path) -> std::collections::BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let lock: toml::Table =
        toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    lock["package"]
        .as_array()
        .expect("a lock file lists packages")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                p["version"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// scripts/test builds the fuzz crate on the test build's dependencies: that holds only while
/// fuzz/Cargo.lock pins the versions Cargo.lock does (else CI builds a second set of them).
#[test]
fn the_fuzz_crate_locks_the_same_dependency_versions() {
    let main = locked(&root().join("Cargo.lock"));
    let fuzz = locked(&root().join("fuzz/Cargo.lock"));
    // The fuzz crate's own dependencies (jobserver comes with libfuzzer-sys' C build).
    let own = ["concierge-fuzz", "libfuzzer-sys", "arbitrary", "jobserver"];
    let differing: Vec<_> = fuzz
        .iter()
        .filter(|(name, _)| !own.contains(&name.as_str()))
        .filter(|p| !main.contains(p))
        .collect();
    assert!(
        differing.is_empty(),
        "fuzz/Cargo.lock pins versions Cargo.lock does not: {differing:?}; refresh it with \
         `cp Cargo.lock fuzz/Cargo.lock && cargo metadata --manifest-path fuzz/Cargo.toml --format-version 1 >/dev/null`"
    );
    assert!(fuzz.iter().any(|(n, _)| n == "libfuzzer-sys"));
}
