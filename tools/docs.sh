#!/usr/bin/env bash
# Build gpgeom's documentation site into docs/_build/html (Sphinx, pydata-sphinx-theme, MyST-NB).
#
#   bash tools/docs.sh              build; notebook pages and tutorials are executed at smoke sizes (SMOKE_TEST=1)
#   bash tools/docs.sh --strict     every warning is an error (sphinx-build -W --keep-going)
#   bash tools/docs.sh --check      CI: every warning is an error except those listed in docs/known_warnings.txt
#   bash tools/docs.sh --no-exec    execute nothing, nor read the cache: pages without outputs (fast, for prose)
#   bash tools/docs.sh --clean      remove docs/_build (outputs and the notebook cache) first
#   bash tools/docs.sh --offline-math   serve MathJax from the site (fetched once with `npm pack mathjax@3`) instead
#                                   of its CDN, for viewing without network (tools/docs_screenshots.py)
#
# Extra arguments after `--` go to sphinx-build. Uses ./.venv when it exists (tools/install.sh installs the docs
# extra there), else the current Python.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
mode=plain
execute=cache
clean=0
offline_math=0
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --strict) mode=strict ;;
        --check) mode=check ;;
        --no-exec) execute=off ;;
        --clean) clean=1 ;;
        --offline-math) offline_math=1 ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "tools/docs.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if ! python -c "import sphinx, myst_nb, pydata_sphinx_theme" 2>/dev/null; then
    echo "tools/docs.sh: the docs extra is not installed; run: pip install -e \".[docs]\" (tools/install.sh does)" >&2
    exit 2
fi
[ "$clean" = 1 ] && rm -rf docs/_build
if [ "$offline_math" = 1 ]; then
    mj=docs/_build/mathjax
    if [ ! -f "$mj/mathjax/tex-mml-chtml.js" ]; then
        tmp=$(mktemp -d)
        (cd "$tmp" && npm pack --silent mathjax@3 >/dev/null && tar xzf mathjax-*.tgz)
        mkdir -p "$mj" && rm -rf "$mj/mathjax" && cp -r "$tmp/package/es5" "$mj/mathjax" && rm -rf "$tmp"
    fi
    export GPGEOM_MATHJAX_DIR="$PWD/$mj"
fi
# smoke sizes, one thread, inline figures (a test runner's MPLBACKEND=Agg would hide every figure)
export SMOKE_TEST=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 GPGEOM_PROGRESS=0 GPGEOM_DOCS_EXECUTE="$execute"
unset MPLBACKEND
log=docs/_build/warnings.log
mkdir -p docs/_build
opts=(-b html -d docs/_build/doctrees -w "$log" -q)
# strict and check modes read every page afresh (-E), so that warnings of unchanged pages are reported again;
# executed notebooks still come from the cache while their source is unchanged
[ "$mode" != plain ] && opts+=(-E)
[ "$mode" = strict ] && opts+=(-W --keep-going)
start=$(date +%s)
status=0
python -m sphinx "${opts[@]}" "${extra[@]}" docs docs/_build/html || status=$?
echo "tools/docs.sh: built docs/_build/html in $(( $(date +%s) - start )) s (sphinx exit $status)"
if [ "$mode" = check ] && [ "$status" = 0 ]; then
    python tools/docs_warnings.py "$log" docs/known_warnings.txt || status=1
fi
exit $status
