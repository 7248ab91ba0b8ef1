//! The API path template of a request (`contacts/:id/contactLists`), the `endpoint` label of
//! the request metrics: an id in a path must not become a label value of its own, or every
//! contact looked up would add a series.

/// Every path the client calls, as templates; anything else is `other`.
const TEMPLATES: [&str; 8] = [
    "users/me",
    "lists/:id",
    "fields",
    "import/bulk_import",
    "import/info",
    "contacts",
    "contacts/:id/contactLists",
    "contactLists",
];

/// The template of `path` (relative to `/api/3/`): each segment made only of digits is `:id`.
pub fn template(path: &str) -> &'static str {
    let shape: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .map(|segment| {
            if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
                ":id"
            } else {
                segment
            }
        })
        .collect();
    let shape = shape.join("/");
    TEMPLATES
        .iter()
        .find(|t| **t == shape)
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_a_path_become_a_placeholder_and_unknown_paths_are_other() {
        let cases = [
            ("users/me", "users/me"),
            ("lists/7", "lists/:id"),
            ("lists/123456", "lists/:id"),
            ("contacts/42/contactLists", "contacts/:id/contactLists"),
            ("import/bulk_import", "import/bulk_import"),
            ("contacts", "contacts"),
            ("lists/abc", "other"),
            ("contacts/ada@example.com/contactLists", "other"),
            ("", "other"),
        ];
        for (path, expected) in cases {
            assert_eq!(template(path), expected, "{path}");
        }
    }
}
