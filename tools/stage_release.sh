#!/bin/sh
# Stage a release in runs/release and score it:
#   SEG="runs/a/best.pt [models/segmenter.onnx:1 ...]" CLS="runs/cls/x/classifier.pt [...]" \
#   CLS_OPTIONS="--max-passes 4 --storage float16" SEG_OPTIONS="--storage float16" \
#   tools/stage_release.sh
# SEG names checkpoints or members of exported graphs (GRAPH.onnx:INDEX). The settings
# (calibration, input check, appearance and presence checks, lesion reading, view agreement)
# are fitted twice: the second pass must leave the version unchanged, so that every record it
# writes is about the final release. Then the test sets are scored, once (BrEaST's test half
# only: the presence check is fitted on its development half). Ship with
# `busdx release --from runs/release`, re-run the studies (python studies/NAME.py) and
# `busdx report`. DATA and BREAST name the two datasets.
set -e
cd "$(dirname "$0")/.."
B=.venv/bin/busdx; P=.venv/bin/python; S=runs/release; T=${THREADS:-2}
D=${DATA:-../shared/data/busbra}; BR=${BREAST:-../shared/data/breast-lesions-usg}
: "${SEG:?name the segmenter checkpoint(s) in SEG}" "${CLS:?name the classifier checkpoint(s) in CLS}"
version() { $P -c "import json; print(json.load(open('$S/release.json'))['version'])"; }
rm -rf $S
checkpoints=""; members=""
for item in $SEG; do
  case $item in
    *.onnx:*) members="$members --onnx-member $item" ;;
    *) checkpoints="$checkpoints $item" ;;
  esac
done
# shellcheck disable=SC2086  # the lists are meant to split
$B export segmentation ${checkpoints:+--checkpoint $checkpoints} $members ${SEG_OPTIONS:-} \
  --out $S/segmenter.onnx
settings() {
  # The checks read the segmenter alone, and the calibration scores a lesion the presence check
  # dismisses as not found: the checks come first, so the first pass is already the whole fit.
  $B evaluate input-check --data $D --models $S
  $B evaluate appearance --data $D --breast $BR --not-ultrasound tests/fixtures/not-ultrasound \
    --models $S --threads $T
  $B evaluate presence --data $D --breast $BR --models $S --threads $T
  # shellcheck disable=SC2086
  $B train classification --calibrate-only --data $D --models $S --checkpoint $CLS \
    ${CLS_OPTIONS:-} --threads $T
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
$B evaluate external --data $BR --subset test --out $S/reports/external/breast_test \
  --evidence-name breast_test --models $S --threads $T
$B evaluate no-lesion --data $D --breast $BR --subset test --models $S --out $S/reports/no_lesion --threads $T
echo "staged release $second in $S"
