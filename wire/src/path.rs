//! Validation of the absolute host paths that travel on the wire. A path is checked, never
//! normalised: anything that would need normalising is refused. Whether the path lies under an
//! allowed root, and opening it there, is the star's business; this module only says whether the
//! text is acceptable at all.

use crate::{MAX_COMPONENT_LEN, MAX_PATH_LEN};

/// Why a wire path was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("path is not absolute")]
    Relative,
    /// The path is longer than [`MAX_PATH_LEN`].
    #[error("path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    /// The path contains a NUL byte.
    #[error("path contains a NUL byte")]
    Nul,
    /// `//`, a trailing `/`, or the bare root `/`.
    #[error("path has an empty component (`//`, a trailing `/`, or `/` alone)")]
    EmptyComponent,
    /// A `.` component.
    #[error("path has a `.` component")]
    Dot,
    /// A `..` component.
    #[error("path has a `..` component")]
    DotDot,
    /// One component is longer than [`MAX_COMPONENT_LEN`].
    #[error("a path component is longer than {MAX_COMPONENT_LEN} bytes")]
    ComponentTooLong,
}

/// Checks that `path` is an absolute path with only plain components: no `.`, `..`, empty
/// components, NUL, or over-long path or component.
///
/// # Errors
///
/// The first rule broken, as a [`PathError`].
pub fn validate(path: &str) -> Result<(), PathError> {
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    let rest = path.strip_prefix('/').ok_or(PathError::Relative)?;
    for component in rest.split('/') {
        match component {
            "" => return Err(PathError::EmptyComponent),
            "." => return Err(PathError::Dot),
            ".." => return Err(PathError::DotDot),
            c if c.len() > MAX_COMPONENT_LEN => return Err(PathError::ComponentTooLong),
            _ => {}
        }
    }
    Ok(())
}

/// The components of a path that [`validate`] accepted, without the leading `/`.
pub fn components(path: &str) -> impl Iterator<Item = &str> {
    path.trim_start_matches('/').split('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_absolute_paths_pass() {
        for ok in [
            "/a",
            "/srv/data/f.bin",
            "/a/.hidden",
            "/a/..b",
            "/a/b.",
            "/x y/é",
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn everything_that_needs_normalising_is_refused() {
        let long_component = format!("/{}", "c".repeat(MAX_COMPONENT_LEN + 1));
        let long_path = "/abc".repeat(MAX_PATH_LEN / 4 + 1);
        let cases = [
            ("", PathError::Relative),
            ("a/b", PathError::Relative),
            ("./a", PathError::Relative),
            ("/", PathError::EmptyComponent),
            ("//a", PathError::EmptyComponent),
            ("/a//b", PathError::EmptyComponent),
            ("/a/", PathError::EmptyComponent),
            ("/a/./b", PathError::Dot),
            ("/a/.", PathError::Dot),
            ("/a/../b", PathError::DotDot),
            ("/..", PathError::DotDot),
            ("/a\0b", PathError::Nul),
            (long_component.as_str(), PathError::ComponentTooLong),
            (long_path.as_str(), PathError::TooLong),
        ];
        for (path, want) in cases {
            assert_eq!(validate(path), Err(want), "{path:?}");
        }
    }

    #[test]
    fn components_split_a_valid_path() {
        assert_eq!(components("/a/b/c").collect::<Vec<_>>(), ["a", "b", "c"]);
    }
}
