"""The local sandbox: a Kubernetes API emulator (kmock) that real kubectl, helm and Kopf accept,
plus a process kubelet that runs Deployments as local TorchServe processes and Jobs as subprocesses.

Built so far: the API (`emulator.SandboxAPI`), the kubelet's Job part (`kubelet.JobKubelet`), the
CLI (`python -m sandbox up|down|status`), client tooling (`tools`, `env`). See README.md."""
