"""stt_operator: the kopf operator for the SttPool custom resource (voxfleet.io/v1alpha1).

An SttPool declares a pool of STT pods; the operator owns what the pool needs
(StatefulSet, headless Service, PodDisruptionBudget, router Deployment and
Service, optional Ingress) and reports status. Modules:

    spec        the SttPool spec model: types, defaults, validation rules
    crd         the CRD generated from the spec model (`python -m stt_operator crd`)
    manifests   pure builders: spec in, Kubernetes objects out
    status      pure status and conditions
    apply       the one place that talks to the API server (server-side apply)
    handlers    thin kopf handlers: <kind>_<verb>
    main        `python -m stt_operator [run|crd]`

The package lives in operator/stt_operator/ and operator/ has no __init__.py on
purpose: the standard library owns the name `operator`.
"""
