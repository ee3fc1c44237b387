#!/usr/bin/env bash
# `make demo`: index the sample photos (and, when present, the Flickr8k originals), then search them.
set -euo pipefail
cd "$(dirname "$0")/.."
X=.venv/bin/xmodal
LIB=${XMODAL_DEMO_LIBRARY:-.demo-library}
rm -rf "$LIB"
export XMODAL_LIBRARY=$LIB
echo "== xmodal index data/samples"
$X index data/samples
if [ -d ../shared/data/flickr8k/originals ]; then
  echo "== xmodal index ../shared/data/flickr8k/originals (100 real photos)"
  $X index ../shared/data/flickr8k/originals
fi
echo "== xmodal index-texts data/samples/captions.txt"
$X index-texts data/samples/captions.txt
for q in "a cat" "a rocket launching" "a cup of coffee" "a dog running on the grass" "children playing in the water"; do
  echo; echo "== xmodal search \"$q\" -k 3"
  $X search "$q" -k 3
done
echo; echo "== xmodal search --image data/samples/cat-chelsea.jpg -k 3   (more like this)"
$X search --image data/samples/cat-chelsea.jpg -k 3
echo; echo "== xmodal search --image data/samples/rocket-launch.jpg --target texts -k 3   (image -> text)"
$X search --image data/samples/rocket-launch.jpg --target texts -k 3
echo; echo "== xmodal search \"a kitten\" --target texts -k 2   (text -> text)"
$X search "a kitten" --target texts -k 2
echo; echo "== xmodal search \"a cat\" -k 3 --no-rerank   (dual-encoder order only)"
$X search "a cat" -k 3 --no-rerank
echo; echo "== xmodal explain \"a tabby cat\" data/samples/cat-chelsea.jpg -o .demo-output/explain-cat.png --per-word"
$X explain "a tabby cat" data/samples/cat-chelsea.jpg -o .demo-output/explain-cat.png --per-word
echo; echo "== xmodal info"
$X info
