//! The crash drill in its short form: real `concierge serve` processes SIGKILLed while
//! shoppers' messages pour in over the API, web chat and email; nothing acknowledged may be lost
//! or answered twice.

use concierge::drill::{CrashDrill, crash};

use crate::helpers::repo_path;

fn short_drill() -> CrashDrill {
    CrashDrill {
        messages: 500,
        kills: 2,
        concurrency: 16,
        ..CrashDrill::new(env!("CARGO_BIN_EXE_concierge").into(), repo_path(""))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_drill_sqlite_loses_and_duplicates_nothing() {
    let report = crash(&short_drill()).await.expect("the drill runs");
    println!("{report}");
    assert_eq!(report.accepted, 500, "{report}");
    assert_eq!(report.kills, 2, "{report}");
    assert!(report.passed(), "{report}");
    // The drill counts what it claims to: every channel took part, and emails went out.
    for c in ["api", "webchat", "email"] {
        assert!(
            report.accepted_by_channel.get(c).copied().unwrap_or(0) >= 100,
            "{report}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_drill_two_postgres_instances_lose_and_duplicate_nothing() {
    let Ok(url) = std::env::var("TEST_DATABASE_URL") else {
        eprintln!("TEST_DATABASE_URL is not set: skipping the PostgreSQL drill");
        return;
    };
    let drill = CrashDrill {
        instances: 2,
        database_url: Some(url),
        ..short_drill()
    };
    let report = crash(&drill).await.expect("the drill runs");
    println!("{report}");
    assert_eq!(report.accepted, 500, "{report}");
    assert_eq!(report.kills, 2, "{report}");
    assert!(report.passed(), "{report}");
}
