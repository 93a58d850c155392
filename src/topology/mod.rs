//! Live topology: the actor graph of running pollers, with counters, as Mermaid or Graphviz DOT.
//!
//! [`Poller::topology`] takes a snapshot of one poller: its source, Fetcher, Scheduler and
//! executors (grouped by the arbiter each runs on), the messages between them, and each node's
//! counters, read from the mirrored statistics ([`Poller::stats`],
//! [`Poller::executor_stats`]). [`Topology::chain`] joins the graphs of pollers where one
//! stage's handler submits to the next, and [`Topology::with_client`] draws who feeds a poller.
//!
//! A snapshot is a picture, not a decision: each counter is exact, but they are read one after
//! another while tasks move, so two of them may be a few tasks apart.
//!
//! Each poller (a *stage*) with `E` executors has `E + 3` nodes (source, Fetcher, Scheduler and
//! the executors) and `2E + 3` edges: `fetch` (source → Fetcher), `ack` (Fetcher → source: the
//! final states the Scheduler returned with its credits), `Ready` (Scheduler → Fetcher), and an
//! `Execute` and a `Done` per executor.
//!
//! This module holds the graph model: the snapshot, naming and chaining. `render.rs` walks the
//! graph for every text format (stages, arbiter groups, nodes, edges); each format has its own
//! file: `mermaid.rs` ([`Topology::to_mermaid`]) and `dot.rs` ([`Topology::to_dot`]).

use std::collections::{HashMap, HashSet};

use crate::Poller;

mod dot;
mod mermaid;
mod render;

/// What a [`Node`] stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NodeKind {
    /// Something outside the pollers that submits tasks: an HTTP route, an actor (see
    /// [`Topology::with_client`]).
    Client,
    /// A poller's [`Source`](crate::Source), owned by its Fetcher.
    Source,
    /// A poller's Fetcher actor.
    Fetcher,
    /// A poller's Scheduler actor.
    Scheduler,
    /// One of a poller's Executor actors.
    Executor,
}

/// The arbiter an actor node runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Placement {
    /// The arbiter that started the poller (the Fetcher and Scheduler always run there).
    CurrentArbiter,
    /// An arbiter thread the poller started for this executor, numbered from 1 in its stage.
    OwnArbiter(usize),
}

/// A node's counters; `None` where the counter does not apply to the node.
///
/// | node      | counters                                    |
/// |-----------|---------------------------------------------|
/// | source    | `queued` (if the source knows it)           |
/// | Fetcher   | `started`, `fetches`, `fetch_errors`        |
/// | Scheduler | `busy`, `limit`, `completed`, `failed`      |
/// | executor  | `busy`, `finished`                          |
/// | client    | none                                        |
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeCounters {
    /// Tasks running now.
    pub busy: Option<u64>,
    /// The concurrency limit.
    pub limit: Option<u64>,
    /// Tasks waiting in the source.
    pub queued: Option<u64>,
    /// Tasks dispatched to executors.
    pub started: Option<u64>,
    /// Attempts that completed.
    pub completed: Option<u64>,
    /// Attempts that failed (returned an error or panicked).
    pub failed: Option<u64>,
    /// Attempts that ended, in any outcome.
    pub finished: Option<u64>,
    /// Calls to the source's `fetch`.
    pub fetches: Option<u64>,
    /// Fetch calls that failed.
    pub fetch_errors: Option<u64>,
}

impl NodeCounters {
    /// The counters that apply, as `"busy 3/16, completed 120"` (empty when none does).
    fn summary(&self) -> String {
        let mut parts = Vec::new();
        match (self.busy, self.limit) {
            (Some(b), Some(l)) => parts.push(format!("busy {b}/{l}")),
            (Some(b), None) => parts.push(format!("busy {b}")),
            (None, Some(l)) => parts.push(format!("limit {l}")),
            (None, None) => {}
        }
        let named = [
            ("queued", self.queued),
            ("started", self.started),
            ("completed", self.completed),
            ("failed", self.failed),
            ("finished", self.finished),
            ("fetches", self.fetches),
            ("fetch errors", self.fetch_errors),
        ];
        parts.extend(
            named
                .iter()
                .filter_map(|(name, v)| v.map(|v| format!("{name} {v}"))),
        );
        parts.join(", ")
    }
}

/// One node of a [`Topology`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Node {
    /// Unique in its topology; letters, digits and `_` only (safe in Mermaid and DOT).
    pub id: String,
    /// What the node stands for.
    pub kind: NodeKind,
    /// The text shown, without counters: `"Fetcher"`, `"Executor 0"`, the source's type name.
    pub label: String,
    /// The stage (poller) the node belongs to; `None` for a client.
    pub stage: Option<String>,
    /// The arbiter an actor runs on; `None` for a client or a source.
    pub placement: Option<Placement>,
    /// The node's counters at the snapshot.
    pub counters: NodeCounters,
}

/// A message flow between two nodes of a [`Topology`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Edge {
    /// The sending node's id.
    pub from: String,
    /// The receiving node's id.
    pub to: String,
    /// What travels: `"Execute"`, `"Done"`, `"Ready"`, `"fetch"`, `"ack"`, or a user's label.
    pub label: String,
}

/// One poller in a [`Topology`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stage {
    /// The stage's name (`"poller"` unless renamed with [`Topology::named`]).
    pub name: String,
    /// The concurrency limit.
    pub workers: usize,
    /// The number of executors.
    pub executors: usize,
    /// `true` when the executors run on the arbiter that started the poller.
    pub on_current_arbiter: bool,
    /// The id prefix of the stage's nodes (the name, made safe and unique).
    prefix: String,
}

/// A snapshot of one or more pollers' actor graph, with per-node counters.
///
/// Build one with [`Poller::topology`], join stages with [`chain`](Self::chain), render with
/// [`to_mermaid`](Self::to_mermaid) or [`to_dot`](Self::to_dot).
///
/// # Examples
///
/// ```
/// use actix_poller::{NodeKind, Poller};
/// use std::{convert::Infallible, time::Duration};
///
/// #[actix_rt::main]
/// async fn main() {
///     let poller = Poller::<u32>::builder()
///         .workers(4)
///         .executors(2)
///         .start(|_n: u32, _cx| async { Ok::<_, Infallible>(()) })
///         .unwrap();
///     let receipt = poller.submit_tracked(1).await.unwrap();
///     receipt.outcome().await.unwrap();
///
///     let topology = poller.topology().with_client("HTTP handlers", "Submit");
///     // Client, source, Fetcher, Scheduler and two executors.
///     assert_eq!(topology.nodes().len(), 6);
///     let scheduler = topology.nodes().iter().find(|n| n.kind == NodeKind::Scheduler).unwrap();
///     assert_eq!(scheduler.counters.completed, Some(1));
///
///     let mermaid = topology.to_mermaid();
///     assert!(mermaid.starts_with("flowchart LR"));
///     assert!(mermaid.contains("Scheduler<br/>busy 0/4, completed 1, failed 0"));
///     assert!(topology.to_dot().starts_with("digraph topology {"));
///     poller.shutdown(Duration::from_secs(1)).await.unwrap();
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    stages: Vec<Stage>,
    nodes: Vec<Node>,
    edges: Vec<Edge>,
}

impl<T: Send + 'static> Poller<T> {
    /// A snapshot of this poller's actor graph and counters, as one stage named `"poller"`.
    ///
    /// A cheap read of mirrored counters: no message is sent, nothing waits.
    ///
    /// # Examples
    ///
    /// ```
    /// use actix_poller::Poller;
    /// use std::{convert::Infallible, time::Duration};
    ///
    /// #[actix_rt::main]
    /// async fn main() {
    ///     let poller = Poller::<u32>::builder()
    ///         .on_current_arbiter()
    ///         .start(|_n: u32, _cx| async { Ok::<_, Infallible>(()) })
    ///         .unwrap();
    ///     println!("{}", poller.topology().to_mermaid());
    ///     poller.shutdown(Duration::from_secs(1)).await.unwrap();
    /// }
    /// ```
    pub fn topology(&self) -> Topology {
        let stats = self.stats();
        let executor_stats = self.executor_stats();
        let stage = Stage {
            name: "poller".to_string(),
            workers: self.workers(),
            executors: self.executors(),
            on_current_arbiter: self.executors_on_current_arbiter(),
            prefix: "poller".to_string(),
        };
        let id = |local: &str| format!("{}_{local}", stage.prefix);
        let node = |local: &str, kind, label: String, placement, counters| Node {
            id: id(local),
            kind,
            label,
            stage: Some(stage.name.clone()),
            placement,
            counters,
        };

        let mut nodes = vec![
            node(
                "source",
                NodeKind::Source,
                short_type_name(self.source_name()),
                None,
                NodeCounters {
                    queued: stats.queued,
                    ..NodeCounters::default()
                },
            ),
            node(
                "fetcher",
                NodeKind::Fetcher,
                "Fetcher".to_string(),
                Some(Placement::CurrentArbiter),
                NodeCounters {
                    started: Some(stats.started),
                    fetches: Some(stats.fetch_calls),
                    fetch_errors: Some(stats.fetch_errors),
                    ..NodeCounters::default()
                },
            ),
            node(
                "scheduler",
                NodeKind::Scheduler,
                "Scheduler".to_string(),
                Some(Placement::CurrentArbiter),
                NodeCounters {
                    busy: Some(stats.busy),
                    limit: Some(stats.limit),
                    completed: Some(stats.completed),
                    failed: Some(stats.failed),
                    ..NodeCounters::default()
                },
            ),
        ];
        let edge = |from: &str, to: &str, label: &str| Edge {
            from: id(from),
            to: id(to),
            label: label.to_string(),
        };
        let mut edges = vec![
            edge("source", "fetcher", "fetch"),
            edge("fetcher", "source", "ack"),
            edge("scheduler", "fetcher", "Ready"),
        ];
        for i in 0..stage.executors {
            let placement = if stage.on_current_arbiter {
                Placement::CurrentArbiter
            } else {
                Placement::OwnArbiter(i + 1)
            };
            let es = executor_stats.get(i).copied().unwrap_or_default();
            let local = format!("executor{i}");
            nodes.push(node(
                &local,
                NodeKind::Executor,
                format!("Executor {i}"),
                Some(placement),
                NodeCounters {
                    busy: Some(es.busy),
                    finished: Some(es.finished),
                    ..NodeCounters::default()
                },
            ));
            edges.push(edge("fetcher", &local, "Execute"));
            edges.push(edge(&local, "scheduler", "Done"));
        }
        Topology {
            stages: vec![stage],
            nodes,
            edges,
        }
    }
}

impl Topology {
    /// The stages (pollers), in chain order.
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// Every node: clients first, then each stage's source, Fetcher, Scheduler and executors.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Every edge.
    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }

    /// Names the first stage (the poller [`Poller::topology`] was called on): the name titles
    /// its group in the rendering and prefixes its node ids. Name each poller before
    /// [`chain`](Self::chain)ing them.
    ///
    /// # Examples
    ///
    /// ```
    /// use actix_poller::Poller;
    /// use std::{convert::Infallible, time::Duration};
    ///
    /// #[actix_rt::main]
    /// async fn main() {
    ///     let poller = Poller::<u32>::builder()
    ///         .on_current_arbiter()
    ///         .start(|_n: u32, _cx| async { Ok::<_, Infallible>(()) })
    ///         .unwrap();
    ///     let topology = poller.topology().named("resize images");
    ///     assert_eq!(topology.stages()[0].name, "resize images");
    ///     assert!(topology.nodes().iter().any(|n| n.id == "resize_images_fetcher"));
    ///     poller.shutdown(Duration::from_secs(1)).await.unwrap();
    /// }
    /// ```
    pub fn named(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        let Some(first) = self.stages.first() else {
            return self;
        };
        let old_name = first.name.clone();
        let others: HashSet<String> = self.stages[1..].iter().map(|s| s.prefix.clone()).collect();
        let (name, prefix) = unique_name(&name, &sanitize(&name), &others);
        self.rename_stage(&old_name, name, prefix);
        self
    }

    /// Joins `next` after this topology: the last stage's executors submit to `next`'s first
    /// stage (an edge labelled `label` from each executor to its Fetcher), as when one poller's
    /// handler submits to another. Stage names that clash are made unique (`"poller_2"`).
    ///
    /// # Examples
    ///
    /// ```
    /// use actix_poller::Poller;
    /// use std::{convert::Infallible, time::Duration};
    ///
    /// #[actix_rt::main]
    /// async fn main() {
    ///     let transform = Poller::<String>::builder()
    ///         .on_current_arbiter()
    ///         .start(|_page: String, _cx| async { Ok::<_, Infallible>(()) })
    ///         .unwrap();
    ///     let next = transform.clone();
    ///     let fetch = Poller::<u32>::builder()
    ///         .executors(2)
    ///         .start(move |n: u32, _cx| {
    ///             let next = next.clone();
    ///             async move { next.submit(format!("page {n}")).await.map(|_| ()) }
    ///         })
    ///         .unwrap();
    ///
    ///     let topology = fetch
    ///         .topology()
    ///         .named("fetch")
    ///         .chain("Submit", transform.topology().named("transform"));
    ///     assert_eq!(topology.stages().len(), 2);
    ///     // (2 + 3) + (1 + 3) nodes; (2·2 + 3) + (2·1 + 3) edges, plus one per fetch executor.
    ///     assert_eq!(topology.nodes().len(), 9);
    ///     assert_eq!(topology.edges().len(), 14);
    ///     assert!(topology.to_mermaid().contains("fetch_executor1 -->|\"Submit\"| transform_fetcher"));
    ///
    ///     fetch.shutdown(Duration::from_secs(1)).await.unwrap();
    ///     transform.shutdown(Duration::from_secs(1)).await.unwrap();
    /// }
    /// ```
    pub fn chain(mut self, label: impl Into<String>, mut next: Topology) -> Topology {
        let label = label.into();
        // Make `next`'s stage prefixes, then its client ids, unique in the joined graph.
        let mut taken: HashSet<String> = self.stages.iter().map(|s| s.prefix.clone()).collect();
        for stage in next.stages.clone() {
            let (name, prefix) = unique_name(&stage.name, &stage.prefix, &taken);
            if prefix != stage.prefix {
                next.rename_stage(&stage.name, name, prefix.clone());
            }
            taken.insert(prefix);
        }
        let mut ids: HashSet<String> = self.nodes.iter().map(|n| n.id.clone()).collect();
        ids.extend(next.nodes.iter().map(|n| n.id.clone()));
        let mut renames = HashMap::new();
        for node in next.nodes.iter_mut().filter(|n| n.kind == NodeKind::Client) {
            if self.nodes.iter().any(|m| m.id == node.id) {
                let id = free_client_id(&ids);
                ids.insert(id.clone());
                renames.insert(node.id.clone(), id.clone());
                node.id = id;
            }
        }
        rename_ends(&mut next.edges, &renames);

        let links: Vec<Edge> = match (self.stages.last(), next.stages.first()) {
            (Some(from), Some(to)) => {
                let target = fetcher_of(to, &next.nodes);
                self.nodes
                    .iter()
                    .filter(|n| {
                        n.kind == NodeKind::Executor && n.stage.as_ref() == Some(&from.name)
                    })
                    .filter_map(|n| {
                        target.as_ref().map(|t| Edge {
                            from: n.id.clone(),
                            to: t.clone(),
                            label: label.clone(),
                        })
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        self.stages.extend(next.stages);
        // Clients first, then stages in chain order.
        let (clients, rest): (Vec<Node>, Vec<Node>) = next
            .nodes
            .into_iter()
            .partition(|n| n.kind == NodeKind::Client);
        let at = self.clients();
        self.nodes.splice(at..at, clients);
        self.nodes.extend(rest);
        self.edges.extend(links);
        self.edges.extend(next.edges);
        self
    }

    /// Adds a client node, `label` (e.g. `"POST /batches"`, `"Gallery actor"`), that sends
    /// `message` (e.g. `"SubmitBatch"`) to the first stage's Fetcher.
    pub fn with_client(mut self, label: impl Into<String>, message: impl Into<String>) -> Self {
        let id = free_client_id(&self.nodes.iter().map(|n| n.id.clone()).collect());
        let target = self.stages.first().and_then(|s| fetcher_of(s, &self.nodes));
        if let Some(to) = target {
            self.edges.push(Edge {
                from: id.clone(),
                to,
                label: message.into(),
            });
        }
        let at = self.clients();
        self.nodes.insert(
            at,
            Node {
                id,
                kind: NodeKind::Client,
                label: label.into(),
                stage: None,
                placement: None,
                counters: NodeCounters::default(),
            },
        );
        self
    }

    fn clients(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.kind == NodeKind::Client)
            .count()
    }

    /// Renames the stage called `old` to `name`, with node ids prefixed by `prefix`.
    fn rename_stage(&mut self, old: &str, name: String, prefix: String) {
        let Some(stage) = self.stages.iter_mut().find(|s| s.name == old) else {
            return;
        };
        let old_prefix = std::mem::replace(&mut stage.prefix, prefix.clone());
        stage.name.clone_from(&name);
        let mut renames = HashMap::new();
        for node in self
            .nodes
            .iter_mut()
            .filter(|n| n.stage.as_deref() == Some(old))
        {
            let local = node
                .id
                .strip_prefix(&old_prefix)
                .unwrap_or(&node.id)
                .to_string();
            let id = format!("{prefix}{local}");
            renames.insert(std::mem::replace(&mut node.id, id.clone()), id);
            node.stage = Some(name.clone());
        }
        rename_ends(&mut self.edges, &renames);
    }
}

/// Letters, digits and `_` only, starting with a letter.
fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_alphabetic()) {
        s.insert(0, 's');
    }
    s
}

/// `(name, prefix)` kept when `prefix` is free; otherwise `prefix_2`, `prefix_3`, ... as both.
fn unique_name(name: &str, prefix: &str, taken: &HashSet<String>) -> (String, String) {
    if !taken.contains(prefix) {
        return (name.to_string(), prefix.to_string());
    }
    let free = (2..)
        .map(|i| format!("{prefix}_{i}"))
        .find(|p| !taken.contains(p))
        .unwrap_or_else(|| prefix.to_string());
    (free.clone(), free)
}

/// The first of `client1`, `client2`, ... not in `taken`.
fn free_client_id(taken: &HashSet<String>) -> String {
    (1..)
        .map(|n| format!("client{n}"))
        .find(|id| !taken.contains(id))
        .unwrap_or_default()
}

fn fetcher_of(stage: &Stage, nodes: &[Node]) -> Option<String> {
    nodes
        .iter()
        .find(|n| n.kind == NodeKind::Fetcher && n.stage.as_ref() == Some(&stage.name))
        .map(|n| n.id.clone())
}

fn rename_ends(edges: &mut [Edge], renames: &HashMap<String, String>) {
    for e in edges {
        for end in [&mut e.from, &mut e.to] {
            if let Some(new) = renames.get(end) {
                end.clone_from(new);
            }
        }
    }
}

/// `a::b::Foo<c::Bar, u8>` → `Foo<Bar, u8>`.
fn short_type_name(full: &str) -> String {
    let mut out = String::with_capacity(full.len());
    let mut path = String::new();
    let flush = |path: &mut String, out: &mut String| {
        out.push_str(path.rsplit("::").next().unwrap_or(path));
        path.clear();
    };
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            path.push(c);
        } else {
            flush(&mut path, &mut out);
            out.push(c);
        }
    }
    flush(&mut path, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_type_names_drop_paths() {
        assert_eq!(
            short_type_name("actix_poller::source::memory::MemorySource<alloc::string::String>"),
            "MemorySource<String>"
        );
        assert_eq!(short_type_name("a::B<c::D, (u8, e::F)>"), "B<D, (u8, F)>");
    }

    #[test]
    fn stage_names_become_ids() {
        assert_eq!(sanitize("resize images!"), "resize_images_");
        assert_eq!(sanitize("2nd"), "s2nd");
    }
}
