{
  "apiVersion": "fleetgate/v1",
  "kind": "ModelPackSignature",
  "algorithm": "ed25519",
  "keyId": "1b79400653d3951a39d9118971cb26647827e4c58ecc41c63029e48d12cc8bb1",
  "signature": "Qh7scoF9aTydlzsJUpkSjF5gXc3lqI9P5knFLmc+I6alMYCGszplRT7/UFharmp3FkXvYBrGpzxAienFTe+uDw=="
}
