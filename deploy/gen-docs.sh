#!/bin/sh
# The man page and the shell completions, generated from vocwatch's own argument parser (vocwatch.cli.main).
# Usage: deploy/gen-docs.sh PYTHON OUTDIR
#   PYTHON imports vocwatch, shtab and argparse-manpage (the "package" extra); OUTDIR gets vocwatch.1,
#   vocwatch.bash (bash-completion) and _vocwatch (zsh). Run by debian/rules at package time and by
#   tests/test_docs.py, so the shipped files and the tested ones come from one command.
set -eu
python=$1
out=$2
mkdir -p "$out"
version=$("$python" -c 'import vocwatch; print(vocwatch.__version__)')
"$python" -m shtab --shell=bash --prog=vocwatch --error-unimportable vocwatch.cli.main._parser >"$out/vocwatch.bash"
"$python" -m shtab --shell=zsh --prog=vocwatch --error-unimportable vocwatch.cli.main._parser >"$out/_vocwatch"
# argparse_manpage.cli has no __main__ guard: call its main() as its console script does.
"$python" -c 'import sys; from argparse_manpage.cli import main; sys.argv[0] = "argparse-manpage"; sys.exit(main())' \
    --module vocwatch.cli.main --function _parser \
    --project-name vocwatch --prog vocwatch --version "$version" --manual-title "vocwatch manual" \
    --description "deliver call recordings to Crescendo's Voice-of-Customer API" \
    --output "$out/vocwatch.1"
# A help text wrapped so that a line starts with ' is read by troff as a request: escape it (\&).
sed -i "s/^'/\\\\\\&'/" "$out/vocwatch.1"
