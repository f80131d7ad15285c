"""shm_operator: the Kopf operator that reconciles SelfHealingModel resources (import name
`shm_operator`; the folder is `operator/`, mapped by setuptools' package-dir)."""
