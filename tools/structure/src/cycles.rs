//! Strongly connected components (Tarjan), for rule 3's cycles.

/// The components of more than one node of the graph with `nodes` nodes and
/// the given edges; each sorted, and the list sorted by first node.
pub fn cycles(nodes: usize, edges: &[(usize, usize)]) -> Vec<Vec<usize>> {
    let mut graph = Tarjan {
        next: vec![Vec::new(); nodes],
        index: vec![None; nodes],
        low: vec![0; nodes],
        on_stack: vec![false; nodes],
        stack: Vec::new(),
        counter: 0,
        found: Vec::new(),
    };
    for &(from, to) in edges {
        graph.next[from].push(to);
    }
    for node in 0..nodes {
        if graph.index[node].is_none() {
            graph.connect(node);
        }
    }
    let mut found: Vec<Vec<usize>> = graph.found.into_iter().filter(|c| c.len() > 1).collect();
    for component in &mut found {
        component.sort_unstable();
    }
    found.sort();
    found
}

struct Tarjan {
    next: Vec<Vec<usize>>,
    index: Vec<Option<usize>>,
    low: Vec<usize>,
    on_stack: Vec<bool>,
    stack: Vec<usize>,
    counter: usize,
    found: Vec<Vec<usize>>,
}

impl Tarjan {
    fn connect(&mut self, node: usize) {
        self.index[node] = Some(self.counter);
        self.low[node] = self.counter;
        self.counter += 1;
        self.stack.push(node);
        self.on_stack[node] = true;
        for i in 0..self.next[node].len() {
            let to = self.next[node][i];
            match self.index[to] {
                None => {
                    self.connect(to);
                    self.low[node] = self.low[node].min(self.low[to]);
                }
                Some(index) if self.on_stack[to] => self.low[node] = self.low[node].min(index),
                Some(_) => {}
            }
        }
        if Some(self.low[node]) == self.index[node] {
            let mut component = Vec::new();
            while let Some(top) = self.stack.pop() {
                self.on_stack[top] = false;
                component.push(top);
                if top == node {
                    break;
                }
            }
            self.found.push(component);
        }
    }
}
