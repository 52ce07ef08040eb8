#!/usr/bin/env bash
# The published CIFAR-10 boards of real models: the released ResNet-20 and ResNet-56 and, for
# each, its CA-Stream, its two k-means heads and its B-cosified model, fitted on all 50,000
# training images. Writes results/cifar10_pretrained/{main,full}/cifar10/.
#
#   bash benchmarks/cifar10_pretrained.sh [STORE] [DATA_ROOT]      (BOARDS=main: that board only)
#
# STORE (default /tmp/interpbench-cifar10-pretrained) holds the decoded data, the models and the
# cells; a rerun finds everything and only rewrites the reports. DATA_ROOT holds CIFAR-10 as
# train/<class>/*.jpg and test/<class>/*.jpg (default: ../shared/data/cifar10-jpeg.tar.gz
# extracted into STORE/cifar10); the weights come from ../shared/weights/cifar10-resnet/.
set -euo pipefail
cd "$(dirname "$0")/.."
STORE=${1:-/tmp/interpbench-cifar10-pretrained}
SHARED=$(cd .. && pwd)/shared
DATA=${2:-$STORE/cifar10}
PY=${PYTHON:-.venv/bin/python}
if [ ! -d "$DATA/test" ]; then
  mkdir -p "$DATA"
  tar xzf "$SHARED/data/cifar10-jpeg.tar.gz" -C "$DATA"
fi
W=$SHARED/weights/cifar10-resnet
NORM="mean:[0.485,0.456,0.406],std:[0.229,0.224,0.225]"  # the released weights' normalisation
FILES=([20]=resnet20-12fca82f.th [56]=resnet56-4bfd9763.th)
# B-cosification fine-tunes the whole network: one epoch on all 50,000 images takes about 7 min
# for ResNet-20 on 2 cores, 3x that for ResNet-56, which gets a 20,000-image epoch (about 9 min).
BCOSIFY_IMAGES=([20]=null [56]=20000)
MAIN_METRICS="[pixel_removal,insertion,deletion,average_drop,average_gain,average_increase]"
FULL_METRICS="[pixel_removal,insertion,deletion,average_drop,average_gain,average_increase,faithfulness_correlation,model_randomisation]"
MSF=metrics.pixel_removal.order=most_salient_first
stamp() { date -u +%H:%M:%S; }
began=$(date +%s)

family() {  # the options selecting ResNet-$1 and the four models derived from it
  local d=$1
  echo "zoo=[cifar_resnet$d,ca_stream_cifar_resnet$d,kmeans_cifar_resnet${d}_b3,kmeans_cifar_resnet${d}_b123,bcosified_cifar_resnet$d]"
  echo "+model_args.cifar_resnet$d={weights:$W/${FILES[$d]},$NORM}"
  echo "profile.recipes.bcosify.max_train_images=${BCOSIFY_IMAGES[$d]}"
}
COMMON=(
  data=cifar10 "data.root=$DATA" data.download=false progress=false
  # the derived models' CPU recipes: all 50,000 training images (B-cosification: see above)
  profile.recipes.ca_stream.max_train_images=null profile.recipes.ca_stream.batch_size=64
  profile.recipes.kmeans_fit.max_train_images=null profile.recipes.bcosify.batch_size=64
  explainers.rise.batch_size=64  # 2.3x faster than 512 on 2 CPU cores
)
board() {  # board (main|full), depth: both sweeps of one board for one family
  local name=$1 d=$2 options
  mapfile -t options < <(family "$d")
  if [ "$name" = main ]; then
    local sweep=(explainer=default profile.eval.num_images=500) metrics=$MAIN_METRICS
  else
    local sweep=(explainer=all profile.eval.num_images=100 metrics.model_randomisation.skip_layers=true)
    local metrics=$FULL_METRICS
  fi
  echo "$(stamp) $name board, ResNet-$d family"
  $PY runners/sweep.py "${COMMON[@]}" "${options[@]}" "store=$STORE/$name" "${sweep[@]}" "metric=$metrics" \
    results_dir="$STORE/results-$name"
  $PY runners/sweep.py "${COMMON[@]}" "${options[@]}" "store=$STORE/$name" "${sweep[@]}" metric=pixel_removal "$MSF" \
    results_dir="$STORE/results-$name-msf"
}

# The full board shares the main board's models and data (a second store, so that its 100-image
# cells and the main board's 500-image cells go to separate leaderboards).
mkdir -p "$STORE/main/models" "$STORE/main/data" "$STORE/full"
for shared in models data; do
  [ -e "$STORE/full/$shared" ] || ln -s "$STORE/main/$shared" "$STORE/full/$shared"
done
for d in 20 56; do
  mapfile -t options < <(family "$d")
  echo "$(stamp) ResNet-$d family: load, fit, fine-tune"
  $PY runners/train.py "${COMMON[@]}" "${options[@]}" "store=$STORE/main"
done
BOARDS=${BOARDS:-main full}  # BOARDS=main: the main board only
if [[ " $BOARDS " == *" main "* ]]; then
  for d in 20 56; do board main $d; done
  $PY runners/report.py "$STORE/main" --results-dir results/cifar10_pretrained/main
fi
if [[ " $BOARDS " == *" full "* ]]; then
  for d in ${FULL_DEPTHS:-20 56}; do board full $d; done
  $PY runners/report.py "$STORE/full" --results-dir results/cifar10_pretrained/full
fi
echo "$(stamp) done in $(( $(date +%s) - began )) s"
