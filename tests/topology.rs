//! Topology rendering: the graph matches the configuration, the counters match the stats, and
//! the Mermaid and DOT texts are well formed.

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;

use actix_poller::{NodeKind, Placement, Poller, Topology};

const GRACE: Duration = Duration::from_secs(5);

fn idle(executors: usize, current: bool) -> Poller<u32> {
    let builder = Poller::<u32>::builder().workers(8).executors(executors);
    let builder = if current {
        builder.on_current_arbiter()
    } else {
        builder
    };
    builder
        .start(|_n: u32, _cx| async { Ok::<_, Infallible>(()) })
        .expect("a valid configuration inside a System")
}

fn count(topology: &Topology, kind: NodeKind) -> usize {
    topology.nodes().iter().filter(|n| n.kind == kind).count()
}

/// Checks the Mermaid text line by line: a header, node declarations with quoted labels and
/// balanced shape brackets, balanced `subgraph`/`end`, and edges between declared nodes.
/// Returns (nodes, edges, subgraphs).
fn check_mermaid(text: &str) -> (usize, usize, usize) {
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("flowchart LR"), "{text}");
    let (mut declared, mut edges, mut subgraphs, mut depth) = (HashSet::new(), 0, 0, 0i32);
    let mut used = Vec::new();
    for line in lines {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("subgraph ") {
            let (id, title) = rest.split_once(' ').expect("subgraph id and title");
            assert!(is_id(id), "subgraph id {id:?}");
            assert!(declared.insert(id.to_string()), "duplicate id {id}");
            assert!(quoted_in(title, "[", "]"), "subgraph title {title:?}");
            subgraphs += 1;
            depth += 1;
        } else if line == "end" {
            depth -= 1;
            assert!(depth >= 0, "unbalanced end");
        } else if let Some((from, rest)) = line.split_once(" -->|") {
            let (label, to) = rest.split_once("| ").expect("edge label then target");
            assert!(quoted(label), "edge label {label:?}");
            assert!(is_id(from) && is_id(to), "edge {line:?}");
            used.push(from.to_string());
            used.push(to.to_string());
            edges += 1;
        } else {
            let cut = line.find(['[', '(', '{']).expect("a node declaration");
            let (id, shape) = line.split_at(cut);
            assert!(is_id(id), "node id {id:?}");
            assert!(declared.insert(id.to_string()), "duplicate id {id}");
            let ok = [("([", "])"), ("[(", ")]"), ("{{", "}}"), ("[", "]")]
                .iter()
                .any(|(open, close)| quoted_in(shape, open, close));
            assert!(ok, "node shape {shape:?}");
        }
    }
    assert_eq!(depth, 0, "unbalanced subgraph");
    for id in used {
        assert!(declared.contains(&id), "edge to undeclared node {id}");
    }
    (declared.len() - subgraphs, edges, subgraphs)
}

/// Checks the DOT text: a digraph, balanced braces, quoted ids, every edge between declared
/// nodes. Returns (nodes, edges, clusters).
fn check_dot(text: &str) -> (usize, usize, usize) {
    assert!(text.starts_with("digraph topology {\n"), "{text}");
    assert!(text.ends_with("}\n"));
    let (mut declared, mut edges, mut clusters, mut depth) = (HashSet::new(), 0, 0, 0i32);
    let mut used = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
        if line.starts_with("subgraph \"cluster_") {
            clusters += 1;
        } else if line.starts_with('"') && line.contains(" -> ") {
            let (from, rest) = line.split_once(" -> ").expect("edge");
            let to = rest.split(' ').next().expect("edge target");
            used.push(from.to_string());
            used.push(to.to_string());
            assert!(line.ends_with("\"];"), "edge {line:?}");
            edges += 1;
        } else if line.starts_with('"') {
            let (id, attrs) = line.split_once(" [").expect("node attributes");
            assert!(declared.insert(id.to_string()), "duplicate node {id}");
            assert!(
                attrs.starts_with("label=\"") && attrs.ends_with("];"),
                "{line:?}"
            );
        }
        assert!(depth >= 0, "unbalanced braces");
    }
    assert_eq!(depth, 0, "unbalanced braces");
    for id in used {
        assert!(declared.contains(&id), "edge to undeclared node {id}");
    }
    (declared.len(), edges, clusters)
}

fn is_id(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `"..."` with no `"` inside.
fn quoted(s: &str) -> bool {
    s.len() >= 2 && s.starts_with('"') && s.ends_with('"') && !s[1..s.len() - 1].contains('"')
}

fn quoted_in(s: &str, open: &str, close: &str) -> bool {
    s.strip_prefix(open)
        .and_then(|s| s.strip_suffix(close))
        .is_some_and(quoted)
}

#[actix_rt::test]
async fn nodes_and_edges_follow_the_configuration() {
    for (executors, current) in [(1, false), (3, false), (2, true)] {
        let poller = idle(executors, current);
        let t = poller.topology();
        assert_eq!(t.stages().len(), 1);
        assert_eq!(t.stages()[0].executors, executors);
        assert_eq!(t.stages()[0].workers, 8);
        assert_eq!(t.nodes().len(), executors + 3);
        assert_eq!(t.edges().len(), 2 * executors + 3);
        assert_eq!(count(&t, NodeKind::Executor), executors);
        assert_eq!(count(&t, NodeKind::Source), 1);
        let source = t.nodes().iter().find(|n| n.kind == NodeKind::Source);
        assert_eq!(source.map(|n| n.label.as_str()), Some("MemorySource<u32>"));

        // Each executor receives one Execute and sends one Done.
        for exec in t.nodes().iter().filter(|n| n.kind == NodeKind::Executor) {
            let into = t.edges().iter().filter(|e| e.to == exec.id).count();
            let out = t.edges().iter().filter(|e| e.from == exec.id).count();
            assert_eq!((into, out), (1, 1), "{}", exec.id);
        }
        // Arbiters: own ones numbered 1..=E, or all on the current one.
        let placements: HashSet<Placement> = t
            .nodes()
            .iter()
            .filter(|n| n.kind == NodeKind::Executor)
            .filter_map(|n| n.placement)
            .collect();
        let expected: HashSet<Placement> = if current {
            HashSet::from([Placement::CurrentArbiter])
        } else {
            (1..=executors).map(Placement::OwnArbiter).collect()
        };
        assert_eq!(placements, expected);

        // Groups: the stage, the current arbiter, and one per own arbiter.
        let groups = 2 + if current { 0 } else { executors };
        let (nodes, edges, subgraphs) = check_mermaid(&t.to_mermaid());
        assert_eq!(
            (nodes, edges, subgraphs),
            (executors + 3, 2 * executors + 3, groups)
        );
        let (nodes, edges, clusters) = check_dot(&t.to_dot());
        assert_eq!(
            (nodes, edges, clusters),
            (executors + 3, 2 * executors + 3, groups)
        );

        poller.shutdown(GRACE).await.expect("first shutdown");
    }
}

#[actix_rt::test]
async fn counters_match_the_stats() {
    let poller = Poller::<u32>::builder()
        .workers(4)
        .executors(2)
        .start(|n: u32, _cx| async move {
            actix_rt::time::sleep(Duration::from_millis(1)).await;
            if n % 10 == 0 {
                Err(format!("task {n} fails"))
            } else {
                Ok(())
            }
        })
        .expect("started");
    let receipts = poller
        .submit_batch_tracked((0..50).collect())
        .await
        .expect("room in the queue");
    for r in receipts {
        r.outcome().await.expect("a final state");
    }

    let stats = poller.stats();
    let t = poller.topology();
    let node = |kind| {
        t.nodes()
            .iter()
            .find(|n| n.kind == kind)
            .expect("one node of each kind")
            .counters
    };
    let scheduler = node(NodeKind::Scheduler);
    assert_eq!(scheduler.completed, Some(stats.completed));
    assert_eq!(scheduler.failed, Some(stats.failed));
    assert_eq!(scheduler.busy, Some(0));
    assert_eq!(scheduler.limit, Some(4));
    assert_eq!((stats.completed, stats.failed), (45, 5));
    assert_eq!(node(NodeKind::Source).queued, Some(0));
    assert_eq!(node(NodeKind::Source).queued, stats.queued);
    let fetcher = node(NodeKind::Fetcher);
    assert_eq!(fetcher.started, Some(50));
    assert_eq!(fetcher.fetches, Some(stats.fetch_calls));
    assert_eq!(fetcher.fetch_errors, Some(0));

    let executors: Vec<_> = t
        .nodes()
        .iter()
        .filter(|n| n.kind == NodeKind::Executor)
        .map(|n| n.counters)
        .collect();
    let per = poller.executor_stats();
    assert_eq!(executors.len(), per.len());
    for (c, s) in executors.iter().zip(&per) {
        assert_eq!(c.finished, Some(s.finished));
        assert_eq!(c.busy, Some(0));
    }
    assert_eq!(executors.iter().filter_map(|c| c.finished).sum::<u64>(), 50);

    let mermaid = t.to_mermaid();
    assert!(
        mermaid.contains("{{\"Scheduler<br/>busy 0/4, completed 45, failed 5\"}}"),
        "{mermaid}"
    );
    assert!(mermaid.contains("[(\"MemorySource#lt;u32#gt;<br/>queued 0\")]"));
    assert!(t
        .to_dot()
        .contains("[label=\"Scheduler\\nbusy 0/4, completed 45, failed 5\", shape=hexagon];"));
    poller.shutdown(GRACE).await.expect("first shutdown");
}

#[actix_rt::test]
async fn chained_stages_link_executors_to_the_next_fetcher() {
    let first = idle(2, false);
    let second = idle(1, true);
    let third = idle(3, true);
    let t = first
        .topology()
        .with_client("POST /pages", "SubmitBatch")
        .chain("Submit", second.topology())
        .chain("Submit", third.topology().with_client("cron", "Submit"));

    // Unnamed stages are told apart.
    let names: Vec<&str> = t.stages().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["poller", "poller_2", "poller_3"]);
    let ids: HashSet<&str> = t.nodes().iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids.len(), t.nodes().len(), "ids are unique");

    // (2 + 3) + (1 + 3) + (3 + 3) nodes and two clients.
    assert_eq!(t.nodes().len(), 17);
    assert_eq!(count(&t, NodeKind::Client), 2);
    // Each stage's 2E + 3, plus the links (2 then 1), plus the clients' edges.
    assert_eq!(t.edges().len(), 7 + 5 + 9 + 2 + 1 + 2);
    let links = |from: &str, to: &str| {
        t.edges()
            .iter()
            .filter(|e| e.label == "Submit" && e.from.starts_with(from) && e.to == to)
            .count()
    };
    assert_eq!(links("poller_executor", "poller_2_fetcher"), 2);
    assert_eq!(links("poller_2_executor", "poller_3_fetcher"), 1);
    assert!(t
        .edges()
        .iter()
        .any(|e| e.from == "client1" && e.to == "poller_fetcher" && e.label == "SubmitBatch"));
    assert!(t
        .edges()
        .iter()
        .any(|e| e.from == "client2" && e.to == "poller_3_fetcher"));

    let (nodes, edges, _) = check_mermaid(&t.to_mermaid());
    assert_eq!((nodes, edges), (17, 26));
    let (nodes, edges, _) = check_dot(&t.to_dot());
    assert_eq!((nodes, edges), (17, 26));

    for p in [first, second, third] {
        p.shutdown(GRACE).await.expect("first shutdown");
    }
}

#[actix_rt::test]
async fn clients_keep_unique_ids_through_chains() {
    let (a, b) = (idle(1, true), idle(1, true));
    let t = a
        .topology()
        .with_client("one", "Submit")
        .chain(
            "Submit",
            b.topology()
                .with_client("two", "Submit")
                .with_client("three", "Submit"),
        )
        .with_client("four", "Submit");
    let clients: Vec<(&str, &str)> = t
        .nodes()
        .iter()
        .filter(|n| n.kind == NodeKind::Client)
        .map(|n| (n.id.as_str(), n.label.as_str()))
        .collect();
    assert_eq!(clients.len(), 4);
    let ids: HashSet<&str> = t.nodes().iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids.len(), t.nodes().len(), "ids are unique: {clients:?}");
    // Each client still feeds the fetcher it fed before the chain.
    let target = |label: &str| {
        let id = clients.iter().find(|c| c.1 == label).map(|c| c.0);
        let edge = t.edges().iter().find(|e| Some(e.from.as_str()) == id);
        edge.map(|e| e.to.as_str())
    };
    assert_eq!(target("one"), Some("poller_fetcher"));
    assert_eq!(target("two"), Some("poller_2_fetcher"));
    assert_eq!(target("three"), Some("poller_2_fetcher"));
    assert_eq!(target("four"), Some("poller_fetcher"));
    check_mermaid(&t.to_mermaid());
    check_dot(&t.to_dot());
    for p in [a, b] {
        p.shutdown(GRACE).await.expect("first shutdown");
    }
}

#[actix_rt::test]
async fn names_and_labels_are_escaped() {
    let poller = idle(1, true);
    let t = poller
        .topology()
        .named("say \"hi\" <now>")
        .with_client("a \"quoted\" #label", "Sub\"mit");
    assert_eq!(t.stages()[0].name, "say \"hi\" <now>");
    assert!(t.nodes().iter().any(|n| n.id == "say__hi___now__fetcher"));
    let mermaid = t.to_mermaid();
    check_mermaid(&mermaid);
    assert!(
        mermaid.contains("a #quot;quoted#quot; #35;label"),
        "{mermaid}"
    );
    assert!(mermaid.contains("say #quot;hi#quot; #lt;now#gt;: 8 workers, 1 executor"));
    let dot = t.to_dot();
    check_dot(&dot);
    assert!(dot.contains("label=\"Sub\\\"mit\""), "{dot}");
    poller.shutdown(GRACE).await.expect("first shutdown");
}
