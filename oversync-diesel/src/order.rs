//! The order in which a push bundle carries its rows, from the foreign-key graph of the
//! managed tables.
//!
//! The server applies a bundle row by row. Applied in first-touch order, a bundle that
//! edits a parent, moves a child to another parent and then deletes the first parent would
//! delete the parent before the child's move: an `ON DELETE CASCADE` takes the child with it,
//! and the child's update then finds nothing to update. So a bundle carries every upsert
//! before any delete, upserts parents first and deletes children first (as the reference
//! clients do). Tables on a foreign-key cycle (teams <-> team_members) have no parent among
//! themselves; the server checks its constraints deferred, at commit, so any order inside a
//! cycle is valid and they share one rank, which keeps their first-touch order.

use std::collections::HashMap;

/// Rank of each managed table (lowercase name): parents before children. Tables on one
/// foreign-key cycle share a rank.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PushOrder {
    rank: HashMap<String, usize>,
}

impl PushOrder {
    /// Computes the ranks. `tables` in registration order; `edges` as (child, parent) table
    /// names, self-references allowed (they impose no order between tables).
    ///
    /// Strongly connected components (Tarjan) are the cycles; each component's level is one
    /// more than the highest level among the components it references (0 without parents).
    /// Components are ranked by (level, first registration index), so the order is stable
    /// and independent of the order SQLite lists foreign keys in.
    pub(crate) fn new(tables: &[&str], edges: &[(String, String)]) -> PushOrder {
        let index: HashMap<String, usize> = tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_lowercase(), i))
            .collect();
        let n = tables.len();
        let mut parents: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (child, parent) in edges {
            if let (Some(&c), Some(&p)) = (
                index.get(&child.to_lowercase()),
                index.get(&parent.to_lowercase()),
            ) && c != p
                && !parents[c].contains(&p)
            {
                parents[c].push(p);
            }
        }
        let component = strongly_connected(&parents);
        let components = component.iter().copied().max().map_or(0, |m| m + 1);
        // Level of each component: longest chain of parents above it.
        let mut level: Vec<Option<usize>> = vec![None; components];
        fn level_of(
            c: usize,
            members: &[Vec<usize>],
            parents: &[Vec<usize>],
            component: &[usize],
            level: &mut [Option<usize>],
        ) -> usize {
            if let Some(l) = level[c] {
                return l;
            }
            let mut l = 0;
            for &t in &members[c] {
                for &p in &parents[t] {
                    let pc = component[p];
                    if pc != c {
                        l = l.max(level_of(pc, members, parents, component, level) + 1);
                    }
                }
            }
            level[c] = Some(l);
            l
        }
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); components];
        for (t, &c) in component.iter().enumerate() {
            members[c].push(t);
        }
        // The condensation is acyclic and small (one node per table): plain recursion.
        let mut keyed: Vec<(usize, usize, usize)> = (0..components)
            .map(|c| {
                let l = level_of(c, &members, &parents, &component, &mut level);
                (l, members[c].iter().copied().min().unwrap_or(0), c)
            })
            .collect();
        keyed.sort_unstable();
        let mut rank_of_component = vec![0; components];
        for (rank, (_, _, c)) in keyed.into_iter().enumerate() {
            rank_of_component[c] = rank;
        }
        let rank = tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_lowercase(), rank_of_component[component[i]]))
            .collect();
        PushOrder { rank }
    }

    /// The rank of `table` (parents lower); unknown tables last.
    #[cfg(test)]
    fn rank(&self, table: &str) -> usize {
        self.rank
            .get(&table.to_lowercase())
            .copied()
            .unwrap_or(self.rank.len())
    }

    /// An SQL `ORDER BY` list over a table with `table_name`, `op` and `dirty_ordinal`
    /// columns: upserts before deletes, upserts by ascending rank, deletes by descending
    /// rank, first-touch order within a rank.
    pub(crate) fn order_by_sql(&self) -> String {
        let mut names: Vec<(&String, &usize)> = self.rank.iter().collect();
        names.sort();
        let mut case = String::from("CASE lower(table_name)");
        for (name, rank) in names {
            case.push_str(&format!(" WHEN '{}' THEN {rank}", name.replace('\'', "''")));
        }
        case.push_str(&format!(" ELSE {} END", self.rank.len()));
        format!(
            "(op = 'DELETE'), CASE WHEN op = 'DELETE' THEN -({case}) ELSE {case} END, dirty_ordinal"
        )
    }
}

/// Tarjan's algorithm: the component id of each node (`parents[node]` are its edges).
fn strongly_connected(parents: &[Vec<usize>]) -> Vec<usize> {
    struct State<'a> {
        edges: &'a [Vec<usize>],
        next_index: usize,
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        component: Vec<usize>,
        components: usize,
    }
    fn visit(s: &mut State<'_>, v: usize) {
        s.index[v] = Some(s.next_index);
        s.low[v] = s.next_index;
        s.next_index += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for i in 0..s.edges[v].len() {
            let w = s.edges[v][i];
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(wi) if s.on_stack[w] => s.low[v] = s.low[v].min(wi),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                s.component[w] = s.components;
                if w == v {
                    break;
                }
            }
            s.components += 1;
        }
    }
    let n = parents.len();
    let mut s = State {
        edges: parents,
        next_index: 0,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        component: vec![0; n],
        components: 0,
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.component
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edges(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(c, p)| (c.to_string(), p.to_string()))
            .collect()
    }

    #[test]
    fn parents_rank_before_children_whatever_the_registration_order() {
        let order = PushOrder::new(
            &["file_reviews", "posts", "files", "users"],
            &edges(&[("file_reviews", "files"), ("posts", "users")]),
        );
        assert!(order.rank("files") < order.rank("file_reviews"));
        assert!(order.rank("users") < order.rank("posts"));
        // Ties (same level) in registration order.
        assert!(order.rank("files") < order.rank("users"));
        assert!(order.rank("file_reviews") < order.rank("posts"));
    }

    #[test]
    fn a_cycle_shares_one_rank_and_self_references_are_ignored() {
        let order = PushOrder::new(
            &["team_members", "categories", "teams", "badges"],
            &edges(&[
                ("team_members", "teams"),
                ("teams", "team_members"),
                ("categories", "categories"),
                ("badges", "team_members"),
            ]),
        );
        assert_eq!(order.rank("teams"), order.rank("team_members"));
        assert!(order.rank("team_members") < order.rank("badges"));
        assert_eq!(order.rank("categories"), order.rank("team_members") + 1);
        assert_eq!(order.rank("TEAMS"), order.rank("teams"));
    }

    #[test]
    fn a_long_chain_is_ranked_by_depth() {
        let order = PushOrder::new(&["c", "b", "a"], &edges(&[("c", "b"), ("b", "a")]));
        assert_eq!(
            (order.rank("a"), order.rank("b"), order.rank("c")),
            (0, 1, 2)
        );
    }

    #[test]
    fn order_by_sorts_upserts_parent_first_and_deletes_child_first() {
        use diesel::connection::SimpleConnection;
        use diesel::prelude::*;
        let order = PushOrder::new(&["child", "parent"], &edges(&[("child", "parent")]));
        let mut conn = diesel::SqliteConnection::establish(":memory:").unwrap();
        conn.batch_execute(
            "CREATE TABLE d (dirty_ordinal INTEGER PRIMARY KEY, table_name TEXT, op TEXT);
             INSERT INTO d VALUES (1, 'parent', 'DELETE'), (2, 'child', 'UPDATE'), (3, 'child', 'DELETE'),
               (4, 'parent', 'INSERT'), (5, 'child', 'INSERT'), (6, 'parent', 'DELETE');",
        )
        .unwrap();
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            dirty_ordinal: i64,
        }
        let rows: Vec<Row> = diesel::sql_query(format!(
            "SELECT dirty_ordinal FROM d ORDER BY {}",
            order.order_by_sql()
        ))
        .load(&mut conn)
        .unwrap();
        let got: Vec<i64> = rows.into_iter().map(|r| r.dirty_ordinal).collect();
        assert_eq!(got, vec![4, 2, 5, 3, 1, 6]);
    }
}
