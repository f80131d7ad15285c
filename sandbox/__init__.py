"""The local sandbox: a Kubernetes API emulator (kmock) that real kubectl, helm and Kopf accept,
plus a process kubelet that runs Deployments as local TorchServe processes and Jobs as subprocesses."""
