#!/usr/bin/env bash
# Remakes the figures and tables of docs/analysis.md from short real runs on a class-balanced subset
# of CIFAR-10 (300 training and 300 validation images, 2-3 epochs: a demonstration of the figures,
# not a measurement), with exactly the commands the page shows. The runs go to $OUT; the figures the
# page shows are copied to docs/analysis/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-build/venv/bin/python}
DATA=${DATA:-../shared/data/cifar10-jpeg.tar.gz}
OUT=${OUT:-runs/analysis-docs}
DOCS=docs/analysis
SMALL=(--subset 300 --val_subset 300 -b 100 -bt 300 --workers 1 --set tensorboard=false)
bnnkit() { "$PY" -m bnnkit "$@"; }
rm -rf "$OUT" && mkdir -p "$OUT" "$DOCS"

# 1. a run's own figures: BiPer's two stages, 3 epochs each
bnnkit train recipes/cifar10/biper_resnet20.yaml --data_path "$DATA" --model resnet20_1w1a "${SMALL[@]}" \
    --set stage1.epochs=3 --set stage2.epochs=3 --results_dir "$OUT"
for f in accuracy loss lr setting_tau flip_ratio qe; do cp "$OUT/biper_resnet20/figures/$f.png" "$DOCS/run_$f.png"; done

# 2. bnnkit plot: SiMaN at two learning rates, two seeds each
for lr in 0.1 0.02; do for seed in 1 2; do
    bnnkit train recipes/cifar10/siman_resnet20.yaml --data_path "$DATA" "${SMALL[@]}" --epochs 3 --lr $lr \
        --seed $seed --results_dir "$OUT/siman" --save "lr${lr}_seed$seed"
done; done
bnnkit plot "$OUT"/siman/lr* -o "$OUT/plot"
for f in accuracy loss; do cp "$OUT/plot/$f.png" "$DOCS/plot_$f.png"; done

# 3. bnnkit inspect: the BiPer stage-2 and a SiMaN checkpoint
bnnkit inspect "$OUT/biper_resnet20/stage2/best.pt" --data_path "$DATA" -o "$OUT/inspect_biper"
bnnkit inspect "$OUT/siman/lr0.1_seed1/best.pt" --data_path "$DATA" -o "$OUT/inspect_siman"
cp "$OUT/inspect_biper/weights/layer2_0_conv2.png" "$DOCS/inspect_biper_weights.png"
cp "$OUT/inspect_siman/weights/layer2_0_conv2.png" "$DOCS/inspect_siman_weights.png"
for f in undecided bit_balance act_plus_one act_mean_abs qe; do cp "$OUT/inspect_biper/$f.png" "$DOCS/inspect_biper_$f.png"; done
cp "$OUT/inspect_siman/bit_balance.png" "$DOCS/inspect_siman_bit_balance.png"
sed "s|$OUT|OUT|g" "$OUT/inspect_biper/inspect.md" > "$DOCS/inspect_biper.md"  # the path as the page writes it

# 4. bnnkit compare: recipes/compare/biper_qe_vs_freq.yaml's study cut to three frequencies, one
# seed and 2 epochs a stage
cat > "$OUT/qe_vs_freq.yaml" <<SPEC
methods: {biper: recipes/cifar10/biper_resnet20.yaml}
models: [resnet20_1w1a]
seeds: [0]
settings: {freq: [5, 20, 40]}
train: {dataset: cifar10, epochs: 2, lr_type: cos, subset: 300, val_subset: 300, batch_size: 100,
        batch_size_test: 300, workers: 1, tensorboard: false}
SPEC
bnnkit compare "$OUT/qe_vs_freq.yaml" --data_path "$DATA" --results_dir "$OUT/qe_vs_freq" --report
for f in qe accuracy; do cp "$OUT/qe_vs_freq/figures/$f.png" "$DOCS/compare_$f.png"; done
cp "$OUT/qe_vs_freq/results.md" "$DOCS/compare_results.md"
echo "analysis figures: $OUT, copied to $DOCS"
