//! Embeds the SQL migrations (`migrations/sqlite`, `migrations/postgres`) into the binary: for
//! each engine, a list of `(version, description, sql)` that `src/store/migrations.rs` turns into
//! sqlx migrators. Versions and descriptions follow sqlx's file naming (`0001_foundation.sql` is
//! version 1, "foundation"), so databases migrated by earlier builds see the same rows.
use std::fmt::Write as _;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    for engine in ["sqlite", "postgres"] {
        let dir = Path::new("migrations").join(engine);
        println!("cargo:rerun-if-changed={}", dir.display());
        let mut files: Vec<(i64, String, std::path::PathBuf)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|entry| entry.expect("migration directory entry").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
            .map(|path| {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                let (version, rest) = name
                    .split_once('_')
                    .unwrap_or_else(|| panic!("migration {name}: expected NNNN_description.sql"));
                let version: i64 = version
                    .parse()
                    .unwrap_or_else(|_| panic!("migration {name}: version is not a number"));
                let description = rest.trim_end_matches(".sql").replace('_', " ");
                (version, description, path)
            })
            .collect();
        files.sort_by_key(|(version, ..)| *version);
        for pair in files.windows(2) {
            assert!(
                pair[0].0 != pair[1].0,
                "two {engine} migrations share version {}",
                pair[0].0
            );
        }
        let mut code = String::from("&[\n");
        for (version, description, path) in &files {
            let absolute = std::fs::canonicalize(path).expect("migration path");
            println!("cargo:rerun-if-changed={}", path.display());
            writeln!(
                code,
                "    ({version}, {description:?}, include_str!({:?})),",
                absolute.display().to_string()
            )
            .unwrap();
        }
        code.push(']');
        std::fs::write(
            Path::new(&out).join(format!("migrations_{engine}.rs")),
            code,
        )
        .expect("writing the embedded migrations");
    }
}
