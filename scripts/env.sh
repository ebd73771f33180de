# Shared environment for rekon's scripts. Sourced, not run.
# Build output and caches live outside the checkout so fresh clones reuse them.
export REKON_CACHE="${REKON_CACHE:-$HOME/.cache/rekon}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REKON_CACHE/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
mkdir -p "$REKON_CACHE"
