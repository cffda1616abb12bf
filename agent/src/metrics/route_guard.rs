//! Caps the distinct routes each service may export; later ones share [`OVERFLOW_ROUTE`].

use std::collections::{HashMap, HashSet};

pub const OVERFLOW_ROUTE: &str = "_OTHER";

pub struct RouteGuard {
    max_per_service: usize,
    seen: HashMap<String, HashSet<String>>,
}

impl RouteGuard {
    pub fn new(max_per_service: usize) -> Self {
        Self {
            max_per_service,
            seen: HashMap::new(),
        }
    }

    /// The route to export for `route`: itself while the service is under its cap or the
    /// route was admitted before, else the overflow route.
    pub fn admit<'a>(&mut self, service: &str, route: &'a str) -> &'a str {
        let routes = match self.seen.get_mut(service) {
            Some(r) => r,
            None => self.seen.entry(service.to_owned()).or_default(),
        };
        if routes.contains(route) {
            return route;
        }
        if routes.len() >= self.max_per_service {
            return OVERFLOW_ROUTE;
        }
        routes.insert(route.to_owned());
        route
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_service() {
        let mut g = RouteGuard::new(2);
        assert_eq!(g.admit("a", "/1"), "/1");
        assert_eq!(g.admit("a", "/2"), "/2");
        assert_eq!(g.admit("a", "/3"), OVERFLOW_ROUTE);
        assert_eq!(g.admit("a", "/1"), "/1");
        assert_eq!(g.admit("b", "/3"), "/3");
    }
}
