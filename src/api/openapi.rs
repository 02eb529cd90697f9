//! The OpenAPI 3 document of the HTTP API, served at `/openapi.json`.

use axum::Json;
use serde_json::{Value, json};

fn err_ref() -> Value {
    json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

pub async fn document() -> Json<Value> {
    Json(json!({
        "openapi": "3.0.3",
        "info": {"title": "owsyncd", "version": env!("CARGO_PKG_VERSION"),
                 "description": "owsync controller API: health, metrics, tenants, cache-aside state, sync triggers."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "code"],
                          "properties": {"error": {"type": "string"}, "code": {"type": "integer"}}},
                "Health": {"type": "object", "required": ["status", "is_leader", "cluster_name", "uptime_seconds", "version"],
                    "properties": {"status": {"type": "string"}, "is_leader": {"type": "boolean"},
                        "leader_id": {"type": "string", "nullable": true}, "node_id": {"type": "string"},
                        "cluster_name": {"type": "string"}, "epoch": {"type": "integer", "nullable": true},
                        "uptime_seconds": {"type": "integer"}, "last_sync": {"type": "string", "nullable": true},
                        "version": {"type": "string"}}},
                "StateValue": {"type": "object", "required": ["key", "value", "cached", "stale"],
                    "properties": {"key": {"type": "string"}, "value": {}, "updated_at": {"type": "string"},
                        "cached": {"type": "boolean"}, "stale": {"type": "boolean"}}},
                "PutState": {"type": "object", "required": ["key", "value"], "additionalProperties": false,
                    "properties": {"key": {"type": "string", "minLength": 1, "maxLength": 256, "description": "no control characters"}, "value": {"description": "any JSON without NUL characters"}}},
                "Trigger": {"type": "object", "required": ["client_name"], "additionalProperties": false,
                    "properties": {"client_name": {"type": "string", "maxLength": 63, "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"}}},
                "TriggerAccepted": {"type": "object", "required": ["success", "sync_id", "status"],
                    "properties": {"success": {"type": "boolean"}, "sync_id": {"type": "string"}, "status": {"type": "string"}}}
            }
        },
        "paths": {
            "/health": {"get": {"summary": "Replica health in the seed's shape", "responses": {
                "200": {"description": "health", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}}}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "Readiness: database reachable and migrated",
                "responses": {"200": {"description": "ready"}, "503": err_ref()}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "OpenMetrics text",
                "content": {"application/openmetrics-text": {"schema": {"type": "string"}}}}}}},
            "/api/v1/clients": {"get": {"summary": "Every tenant of this cluster, spec and status",
                "responses": {"200": {"description": "list"}, "503": err_ref()}}},
            "/api/v1/clients/{name}": {"get": {"summary": "One tenant",
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string", "maxLength": 63, "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"}}],
                "responses": {"200": {"description": "the tenant"}, "400": err_ref(), "404": err_ref(), "503": err_ref()}}},
            "/api/v1/state": {
                "get": {"summary": "Read a state key (cache-aside, 5 min TTL, stale-if-error)",
                    "parameters": [{"name": "key", "in": "query", "required": true, "schema": {"type": "string", "minLength": 1, "maxLength": 256}}],
                    "responses": {"200": {"description": "value", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/StateValue"}}}},
                                  "400": err_ref(), "404": err_ref(), "503": err_ref()}},
                "put": {"summary": "Write a state key (PostgreSQL first, then every replica's cache is invalidated)",
                    "security": [{"bearer": []}],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PutState"}}}},
                    "responses": {"200": {"description": "written"}, "400": err_ref(), "401": err_ref(), "403": err_ref(),
                                  "413": err_ref(), "415": err_ref(), "422": err_ref(), "503": err_ref()}}},
            "/api/v1/sync/trigger": {"post": {"summary": "Ask the leader to sync a tenant now",
                "security": [{"bearer": []}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Trigger"}}}},
                "responses": {"202": {"description": "queued", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TriggerAccepted"}}}},
                              "400": err_ref(), "401": err_ref(), "403": err_ref(), "404": err_ref(), "409": err_ref(),
                              "413": err_ref(), "415": err_ref(), "422": err_ref(), "503": err_ref()}}}
        }
    }))
}
