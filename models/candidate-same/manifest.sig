{
  "apiVersion": "fleetgate/v1",
  "kind": "ModelPackSignature",
  "algorithm": "ed25519",
  "keyId": "1b79400653d3951a39d9118971cb26647827e4c58ecc41c63029e48d12cc8bb1",
  "signature": "djUGKz5O4GOZxHfN/kx8cWf4w+Rj1d9yLZ7Yv+QcxlmkpIerEVdo+X/Zoc5omzxZsvbFoQlcpAEH6HR/KGxBCA=="
}
