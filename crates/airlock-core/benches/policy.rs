//! Classifier (uncached and cached) and decision-function throughput.
//! Run: `cargo bench -p airlock-core --bench policy`.

use airlock_core::classify::{classify, ClassifierCache};
use airlock_core::config::Config;
use airlock_core::identity::{AuthMethod, Identity};
use airlock_core::operation::Operation;
use airlock_core::policy::decide;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::sync::Arc;

const STATEMENTS: &[(&str, &str)] = &[
    ("point select", "SELECT abalance FROM pgbench_accounts WHERE aid = 48213"),
    (
        "join",
        "SELECT u.id, u.email, count(o.id) FROM users u JOIN orders o ON o.user_id = u.id \
         WHERE u.created_at > now() - interval '7 days' GROUP BY u.id, u.email ORDER BY 3 DESC LIMIT 20",
    ),
    ("update", "UPDATE pgbench_accounts SET abalance = abalance + 12 WHERE aid = 48213"),
    (
        "cte with nested delete",
        "WITH gone AS (DELETE FROM sessions WHERE expires_at < now() RETURNING id) SELECT count(*) FROM gone",
    ),
];

const CONFIG: &str = r#"
connections:
  - { name: prod, type: postgres, address: "127.0.0.1:5432", database: app, user: app }
policies:
  - name: agents
    groups: [agents]
    connections: [prod]
    rules:
      - { match: SELECT, action: allow }
      - { match: INSERT|UPDATE, tables: ["public.pgbench_*"], action: allow }
      - { match: DELETE|DROP|TRUNCATE, action: require-approval, reviewers: [dba], timeout: 15m }
      - { match: UPDATE|DELETE, where: missing, action: deny }
"#;

fn classifier(c: &mut Criterion) {
    let mut group = c.benchmark_group("classify");
    group.throughput(Throughput::Elements(1));
    for (name, sql) in STATEMENTS {
        group.bench_function(format!("uncached/{name}"), |b| {
            b.iter(|| classify(black_box(sql)))
        });
        let cache = ClassifierCache::new(1024);
        group.bench_function(format!("cached/{name}"), |b| {
            b.iter(|| cache.classify(black_box(sql)))
        });
    }
    group.finish();
}

fn decision(c: &mut Criterion) {
    let loaded = match Config::parse(CONFIG, "bench.yaml", None) {
        Ok(loaded) => loaded,
        Err(e) => panic!("bench config: {e}"),
    };
    let identity = Identity {
        subject: "token:1".into(),
        name: "agent".into(),
        groups: vec!["agents".into()],
        method: AuthMethod::AgentToken,
        expires_at: None,
    };
    let mut group = c.benchmark_group("decide");
    group.throughput(Throughput::Elements(1));
    for (name, sql) in STATEMENTS {
        let op = Operation {
            connection: "prod".into(),
            text: Arc::from(*sql),
            params: Vec::new(),
            classification: Arc::new(classify(sql)),
        };
        group.bench_function(*name, |b| {
            b.iter(|| decide(black_box(&loaded.policies), &identity, black_box(&op)))
        });
    }
    group.finish();
}

criterion_group!(benches, classifier, decision);
criterion_main!(benches);
