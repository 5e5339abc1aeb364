//! The dashboard: one self-contained page (no external scripts, styles or fonts) served at
//! `GET /` by the local API. It holds no data: the page reads the token from its URL's
//! fragment (`#token=...`, never sent to a server), asks `/status` and `/metrics/history`
//! every 5 s and draws status, health, peers, sync progress and bandwidth and round-trip
//! charts (inline SVG). `mynet dashboard` prints its address.

/// The page.
pub const PAGE: &str = include_str!("page.html");

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_is_self_contained() {
        for outside in ["<script src", "<link", "@import", "url(", "https://", "//fonts"] {
            assert!(!super::PAGE.contains(outside), "the page refers outside itself: {outside}");
        }
        // The one http: is the SVG namespace, which is a name, not a fetch.
        assert_eq!(super::PAGE.matches("http://").count(), 1);
    }
}
