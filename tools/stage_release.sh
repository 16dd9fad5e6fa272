#!/bin/sh
# Stage a release in runs/release and score it, the way the held-back one-network release was:
#   SEG="runs/a/best.pt [runs/b/best.pt]" CLS="runs/cls/x/classifier.pt [...]" \
#   CLS_OPTIONS="--max-passes 4 --storage float16" tools/stage_release.sh
# The settings (calibration, input check, appearance check, lesion reading, view agreement) are
# fitted twice: the second pass must leave the version unchanged, so that every record it
# writes is about the final release. Then the test sets are scored, once. Ship with
# `busdx release --from runs/release`, re-run the studies (python studies/NAME.py) and
# `busdx report`. DATA and BREAST name the two datasets.
set -e
cd "$(dirname "$0")/.."
B=.venv/bin/busdx; P=.venv/bin/python; S=runs/release; T=${THREADS:-2}
D=${DATA:-../shared/data/busbra}; BR=${BREAST:-../shared/data/breast-lesions-usg}
: "${SEG:?name the segmenter checkpoint(s) in SEG}" "${CLS:?name the classifier checkpoint(s) in CLS}"
version() { $P -c "import json; print(json.load(open('$S/release.json'))['version'])"; }
rm -rf $S
# shellcheck disable=SC2086  # the checkpoint lists are meant to split
$B export segmentation --checkpoint $SEG --out $S/segmenter.onnx
settings() {
  # shellcheck disable=SC2086
  $B train classification --calibrate-only --data $D --models $S --checkpoint $CLS \
    ${CLS_OPTIONS:-} --threads $T
  $B evaluate input-check --data $D --models $S
  $B evaluate appearance --data $D --breast $BR --not-ultrasound tests/fixtures/not-ultrasound \
    --models $S --threads $T
  $B evaluate classification --data $D --models $S --fit-lesion-reading --threads $T
  $P studies/view_agreement.py --data $D --models $S --out runs/view_agreement
}
settings; first=$(version)
settings; second=$(version)
[ "$first" = "$second" ] || { echo "the settings moved on a second fit ($first -> $second)"; exit 1; }
$B evaluate segmentation --data $D --models $S --threads $T
$B evaluate segmentation --data $D --models $S --split val --threads $T
$B evaluate classification --data $D --models $S --masks gt --threads $T
$B evaluate classification --data $D --models $S --threads $T
$B evaluate external --data $BR --subset all --out $S/reports/external/breast_all \
  --evidence-name breast_all --models $S --threads $T
$B evaluate external --data $BR --subset test --out $S/reports/external/breast_test \
  --evidence-name breast_test --models $S --threads $T
$B evaluate no-lesion --data $D --breast $BR --subset test --models $S --out $S/reports/no_lesion --threads $T
echo "staged release $second in $S"
