#!/usr/bin/env bash
# The MVTec 3D-AD benchmark, end to end, on the real download.
#
#   scripts/mvtec3d_benchmark.sh [--btf] ROOT [WORK]
#
# ROOT  the extracted release: the folder that holds bagel/ cable_gland/ carrot/ cookie/ dowel/ foam/ peach/
#       potato/ rope/ tire/, each with train/ validation/ test/ (and calibration/camera_parameters.json).
# WORK  where everything is written (default: ./mvtec3d-benchmark):
#         WORK/preprocessed/  ROOT with every cloud's background removed once, as BTF and M3DM preprocess
#                             MVTec 3D-AD (patchbank preprocess; rgb and gt hard-linked, ROOT untouched)
#         WORK/banks/         one bank per category, Patchbank's default method
#         WORK/survey/        its survey tables beside BTF's and M3DM's published rows (evaluate --all --out)
# --btf also runs BTF's published method into WORK/banks-btf/ and WORK/survey-btf/: rgb+fpfh, whose RGB
#       backbone is the published wide_resnet50_2 by default (its ImageNet weights: the local file that
#       BTF_WEIGHTS names, e.g. wide_resnet50_2.tv_in1k.safetensors, else timm's hub or its cache).
#
# Rerun the same command to resume: preprocessing skips the clouds already done, and evaluate --all builds
# only the banks that are missing. PATCHBANK names the command (default: patchbank); the device and other
# settings are patchbank's own (PATCHBANK_DEVICE=cuda, patchbank.toml).
set -euo pipefail

CATEGORIES=(bagel cable_gland carrot cookie dowel foam peach potato rope tire)
SPLITS=(train validation test)

usage() {
    echo "usage: $0 [--btf] ROOT [WORK]" >&2
    echo "  ROOT: the extracted MVTec 3D-AD (the folder holding ${CATEGORIES[*]})" >&2
    echo "  WORK: where the preprocessed data, banks and survey go (default: ./mvtec3d-benchmark)" >&2
    echo "  --btf: also BTF's published method (rgb+fpfh with wide_resnet50_2)" >&2
    exit "${1:-2}"
}

refuse() {
    echo "error: $*" >&2
    exit 2
}

btf=0
args=()
for arg in "$@"; do
    case "$arg" in
        --btf) btf=1 ;;
        -h | --help) usage 0 ;;
        -*) echo "error: unknown option $arg" >&2 && usage ;;
        *) args+=("$arg") ;;
    esac
done
[[ ${#args[@]} -ge 1 && ${#args[@]} -le 2 ]] || usage
root=${args[0]}
work=${args[1]:-mvtec3d-benchmark}

# ROOT must be the release itself: the ten category folders, each with its three splits.
[[ -d "$root" ]] || refuse "$root is not a directory"
missing=()
for category in "${CATEGORIES[@]}"; do
    [[ -d "$root/$category" ]] || missing+=("$category")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    for inner in "$root"/*/; do
        if [[ -d "$inner/bagel" && -d "$inner/tire" ]]; then
            refuse "$root is not MVTec 3D-AD itself; did you mean ${inner%/}?"
        fi
    done
    refuse "$root is not MVTec 3D-AD: 10 category folders expected (${CATEGORIES[*]});" \
        "missing: ${missing[*]}"
fi
for category in "${CATEGORIES[@]}"; do
    for split in "${SPLITS[@]}"; do
        [[ -d "$root/$category/$split" ]] ||
            refuse "$root is not MVTec 3D-AD: $category has no $split/ folder"
    done
done

read -r -a patchbank <<<"${PATCHBANK:-patchbank}"
mkdir -p "$work"
echo "== preprocessing $root -> $work/preprocessed (resumes where it stopped)"
"${patchbank[@]}" preprocess "$root" "$work/preprocessed" --categories "${CATEGORIES[@]}"

echo "== Patchbank's default method -> $work/banks, $work/survey"
"${patchbank[@]}" evaluate --all --data-root "$work/preprocessed" --banks "$work/banks" --out "$work/survey"

if [[ $btf -eq 1 ]]; then
    echo "== BTF's published method (rgb+fpfh, wide_resnet50_2) -> $work/banks-btf, $work/survey-btf"
    # evaluate --all builds a missing bank with build's defaults: rgb+fpfh's backbone is wide_resnet50_2
    weights=()
    [[ -z "${BTF_WEIGHTS:-}" ]] || weights=(--weights "$BTF_WEIGHTS")
    "${patchbank[@]}" evaluate --all --data-root "$work/preprocessed" --banks "$work/banks-btf" \
        --out "$work/survey-btf" --method rgb+fpfh "${weights[@]}"
fi
surveys="$work/survey"
[[ $btf -eq 0 ]] || surveys+=" and $work/survey-btf"
echo "== done: the survey tables (survey.md, .csv, .json) are in $surveys"
