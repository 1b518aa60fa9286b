//! Masking throughput on a realistic result set (customers: id, name, email, phone, plan,
//! signup time, free-text notes), in MB/s of values and in rows/s:
//!
//! - `untouched`: a session whose rules touch none of the columns (the relay's cost is the plan
//!   alone; values are not looked at);
//! - `columns`: whole-column rules (`hash` on email, `partial` on phone);
//! - `detectors`: every detector scanning every text column;
//! - `columns+detectors`: both, as a typical production rule set.
//!
//! Run: `cargo bench -p airlock-core --bench mask`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use airlock_core::mask::{
    ColumnAction, ColumnOrigin, ColumnSource, HashKey, MaskCounts, MaskPolicy, MaskRuleConfig,
    Masked,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

const ROWS: usize = 10_000;

fn result_set() -> (Vec<ColumnSource>, Vec<Vec<String>>) {
    let column = |label: &str, type_oid: u32| ColumnSource {
        label: label.into(),
        origin: Some(ColumnOrigin {
            schema: "public".into(),
            table: "customers".into(),
            column: label.into(),
        }),
        type_oid,
    };
    let columns = vec![
        column("id", 23),
        column("name", 25),
        column("email", 25),
        column("phone", 25),
        column("plan", 25),
        column("signed_up", 1184),
        column("notes", 25),
    ];
    let notes = [
        "renewed the annual plan, no issues reported",
        "asked for an invoice copy; sent to billing@example.org on request",
        "called from +1 415 555 2671 about a failed payment with card 4111 1111 1111 1111",
        "prefers email contact; account manager assigned last quarter",
        "API access enabled; rotated key after password=Winter2024! was shared in a ticket",
    ];
    let rows = (0..ROWS)
        .map(|i| {
            vec![
                i.to_string(),
                format!("Customer {i}"),
                format!("user{i}@example.com"),
                format!("+1 415 555 {:04}", i % 10_000),
                ["free", "team", "enterprise"][i % 3].to_string(),
                "2024-03-01 12:00:00+00".to_string(),
                notes[i % notes.len()].to_string(),
            ]
        })
        .collect();
    (columns, rows)
}

fn rules(yaml: &str) -> MaskPolicy {
    let rules: Vec<MaskRuleConfig> = serde_yaml::from_str(yaml).expect("rules");
    MaskPolicy::new(rules, HashKey::new([42; 32]))
}

fn bench(c: &mut Criterion) {
    let (columns, rows) = result_set();
    let bytes: usize = rows.iter().flatten().map(String::len).sum();
    let cases = [
        ("untouched", "- connections: ['*']\n  columns: [other_table.secret]\n"),
        (
            "columns",
            "- connections: ['*']\n  columns: [customers.email]\n  style: hash\n- connections: ['*']\n  columns: [phone]\n  style: partial\n",
        ),
        (
            "detectors",
            "- connections: ['*']\n  detectors: [email, credit_card, us_ssn, phone, iban, ipv4, secret]\n",
        ),
        (
            "columns+detectors",
            "- connections: ['*']\n  columns: [customers.email]\n  style: hash\n- connections: ['*']\n  columns: [phone]\n  style: partial\n- connections: ['*']\n  detectors: [email, credit_card, us_ssn, phone, iban, ipv4, secret]\n",
        ),
    ];
    for (unit, throughput) in [
        ("MB/s", Throughput::Bytes(bytes as u64)),
        ("rows/s", Throughput::Elements(ROWS as u64)),
    ] {
        let mut group = c.benchmark_group(format!("mask {ROWS} rows ({unit})"));
        group.throughput(throughput);
        for (name, yaml) in cases {
            let masker = rules(yaml)
                .for_session("prod", &[])
                .expect("compile")
                .expect("a rule applies");
            let plan = masker.plan(&columns);
            group.bench_with_input(BenchmarkId::from_parameter(name), &plan, |b, plan| {
                b.iter(|| {
                    let mut counts = MaskCounts::default();
                    let mut changed = 0usize;
                    for row in &rows {
                        for (value, action) in row.iter().zip(plan) {
                            if *action == ColumnAction::Pass {
                                continue;
                            }
                            if masker.apply(*action, value.as_bytes(), &mut counts)
                                != Masked::Unchanged
                            {
                                changed += 1;
                            }
                        }
                    }
                    black_box((changed, counts))
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
