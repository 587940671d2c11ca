# Sourced by the scripts in scripts/maple/: the reference's config of each trainer when CFG is not set
# (muzairkhattak/multimodal-prompt-learning@69bce21 scripts/{maple,independent-vlp,vpt}/).

# base2new_cfg TRAINER: the base-to-new config stem.
base2new_cfg() {
    case "$1" in
        MaPLe) echo "vit_b16_c2_ep5_batch4_2ctx" ;;
        IVLP) echo "vit_b16_c2_ep5_batch4_2+2ctx" ;;
        VPT) echo "vit_b16_c2_ep5_batch4_4" ;;
        *) echo "error: TRAINER=$1; scripts/maple/ runs MaPLe, IVLP or VPT (or set CFG)" >&2; return 1 ;;
    esac
}

# xd_cfg TRAINER: the cross-dataset config stem (MaPLe has its own; IVLP and VPT reuse the base-to-new one).
xd_cfg() {
    if [ "$1" = "MaPLe" ]; then echo "vit_b16_c2_ep5_batch4_2ctx_cross_datasets"; else base2new_cfg "$1"; fi
}
