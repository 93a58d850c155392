//! The walk every renderer shares: clients, then each stage with its nodes grouped by arbiter,
//! then the edges, written in a [`Format`].

use std::fmt::Write as _;

use super::{Edge, Node, Placement, Stage, Topology};

impl Stage {
    /// The stage's group title: its name, workers and executors.
    pub(super) fn title(&self) -> String {
        let executors = if self.executors == 1 {
            "1 executor".to_string()
        } else {
            format!("{} executors", self.executors)
        };
        format!("{}: {} workers, {executors}", self.name, self.workers)
    }
}

/// What one text format writes for each part of the graph. [`Topology::render`] walks the graph
/// the same way for every format, so the renderers differ only in their syntax.
pub(super) trait Format {
    /// The lines before anything else.
    const HEADER: &'static str;
    /// The lines after everything else.
    const FOOTER: &'static str;
    /// What closes a group.
    const CLOSE: &'static str;

    /// A node's declaration, on one line.
    fn node(&self, node: &Node) -> String;

    /// The line(s) opening a group, each starting with `indent`: the stage `prefix`'s own group
    /// when `key` is `None`, else its arbiter group `key`.
    fn open(&self, prefix: &str, key: Option<&str>, title: &str, indent: &str) -> String;

    /// An edge, on one line.
    fn edge(&self, edge: &Edge) -> String;
}

impl Topology {
    /// The graph in `format`: clients first, then each stage (the source ungrouped, the rest
    /// grouped by arbiter), then the edges.
    pub(super) fn render<F: Format>(&self, format: &F) -> String {
        let mut out = String::from(F::HEADER);
        for node in self.nodes.iter().filter(|n| n.stage.is_none()) {
            let _ = writeln!(out, "    {}", format.node(node));
        }
        for stage in &self.stages {
            out.push_str(&format.open(&stage.prefix, None, &stage.title(), "    "));
            for group in self.groups(stage) {
                let indent = if group.title.is_some() { "    " } else { "" };
                if let Some(title) = &group.title {
                    out.push_str(&format.open(&stage.prefix, Some(&group.key), title, "        "));
                }
                for node in group.nodes {
                    let _ = writeln!(out, "        {indent}{}", format.node(node));
                }
                if group.title.is_some() {
                    let _ = writeln!(out, "        {}", F::CLOSE);
                }
            }
            let _ = writeln!(out, "    {}", F::CLOSE);
        }
        for e in &self.edges {
            let _ = writeln!(out, "    {}", format.edge(e));
        }
        out.push_str(F::FOOTER);
        out
    }

    /// The stage's nodes grouped for rendering: ungrouped (the source) first, then the
    /// current arbiter, then each own arbiter.
    fn groups<'a>(&'a self, stage: &Stage) -> Vec<Group<'a>> {
        let in_stage: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| n.stage.as_ref() == Some(&stage.name))
            .collect();
        let mut groups = vec![Group {
            key: String::new(),
            title: None,
            nodes: in_stage
                .iter()
                .copied()
                .filter(|n| n.placement.is_none())
                .collect(),
        }];
        let mut placements: Vec<Placement> = Vec::new();
        for n in &in_stage {
            if let Some(p) = n.placement {
                if !placements.contains(&p) {
                    placements.push(p);
                }
            }
        }
        for p in placements {
            let (key, title) = match p {
                Placement::CurrentArbiter => ("current".to_string(), "current arbiter".to_string()),
                Placement::OwnArbiter(i) => (format!("arbiter{i}"), format!("arbiter {i}")),
            };
            groups.push(Group {
                key,
                title: Some(title),
                nodes: in_stage
                    .iter()
                    .copied()
                    .filter(|n| n.placement == Some(p))
                    .collect(),
            });
        }
        groups
    }
}

/// A stage's nodes on one arbiter (or, untitled, those on none).
struct Group<'a> {
    key: String,
    title: Option<String>,
    nodes: Vec<&'a Node>,
}

/// The node's label and, on a second line, its counters.
pub(super) fn lines(node: &Node) -> (String, String) {
    (node.label.clone(), node.counters.summary())
}
