{
  "apiVersion": "fleetgate/v1",
  "kind": "ModelPackSignature",
  "algorithm": "ed25519",
  "keyId": "1b79400653d3951a39d9118971cb26647827e4c58ecc41c63029e48d12cc8bb1",
  "signature": "kTFWIbpflmsm/YxhN2G9Jdiz8ZLOqESzVZXsvLtneS9DiZeaamVC+0nF/KK6SxgvGn7YHoJQP/4eQWEFJ10uDA=="
}
