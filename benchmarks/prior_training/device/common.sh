# Sourced by the call scripts: run from the root of the copied tree (.devrun on the device).
# Wheels of the packages the GPU image lacks are in ./whl; the shipped v1 weights are those of
# the device's working tree one level up (not copied twice, to stay under the 64 MiB limit).
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
if [ ! -f medrecon/priors/weights/default.json ]; then
    export MEDRECON_PRIORS=$PWD/../medrecon/priors/weights
fi
mkdir -p /tmp/logs
# cheap MR cases first, so a time limit cuts the slow CT slices, not everything
CASES=mr_brain_piesno,mr_dwi_b0,mr_abdomen,ct_abdomen,ct_head_ect,ct_spine
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > /tmp/logs/gpu.txt
# wait_bg PID DEADLINE_S: wait for a background job until DEADLINE_S after the start
wait_bg() { while kill -0 "$1" 2>/dev/null && [ "$(elapsed)" -lt "$2" ]; do sleep 2; done
            kill "$1" 2>/dev/null; true; }
