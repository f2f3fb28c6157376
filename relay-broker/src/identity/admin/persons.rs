//! `/persons`: adding, listing and disabling persons, and their grants.

use super::*;

#[derive(Deserialize)]
pub(super) struct NewPerson {
    name: String,
    password: String,
}

pub(super) async fn add_person(
    State(state): State<Arc<Identity>>,
    headers: HeaderMap,
    Json(body): Json<NewPerson>,
) -> Result<Json<Person>> {
    require_manage(&state, &headers)?;
    let name = body.name.trim().to_owned();
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
    {
        return Err(IdentityError::BadRequest(
            "name: 1-128 characters of letters, digits, '-', '_', '.', '@'".into(),
        ));
    }
    if body.password.len() < 12 || body.password.len() > MAX_PASSWORD {
        return Err(IdentityError::BadRequest(
            "password: at least 12 characters".into(),
        ));
    }
    let store = Arc::clone(&state.store);
    let person = blocking(move || {
        let hash = hash_password(&body.password)?;
        let write = IdentityWrite::AddPerson {
            name: &name,
            password_hash: &hash,
        };
        store.write_audited(write, &[AuditEvent::now(AuditKind::PersonAdd, &name, "")])?;
        Ok(Person {
            name,
            disabled: false,
            rights: Vec::new(),
        })
    })
    .await?;
    Ok(Json(person))
}

pub(super) async fn list_persons(
    State(state): State<Arc<Identity>>,
    headers: HeaderMap,
) -> Result<Json<Vec<Person>>> {
    require_manage(&state, &headers)?;
    let store = Arc::clone(&state.store);
    Ok(Json(blocking(move || store.persons()).await?))
}

pub(super) async fn disable_person(
    State(state): State<Arc<Identity>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Person>> {
    require_manage(&state, &headers)?;
    let store = Arc::clone(&state.store);
    let shared2 = Arc::clone(&state);
    let found = blocking(move || {
        let theirs = crate::identity::listeners::registered_by(&*store, &name)?;
        let event = AuditEvent::now(
            AuditKind::PersonDisable,
            &name,
            &format!("closed the sessions of {} listeners", theirs.len()),
        );
        let disable = IdentityWrite::SetPersonDisabled {
            name: &name,
            disabled: true,
        };
        if !store.write_audited(disable, &[event])? {
            return Ok(None);
        }
        // Everything the person registered stops now: their listeners fail the person
        // check from here on (the store says so first), and what they have open is closed.
        for listener in &theirs {
            shared2.revocations.publish(listener);
        }
        Ok(store.person(&name)?.map(|(p, _)| p))
    })
    .await?;
    Ok(Json(
        found.ok_or_else(|| IdentityError::NotFound("person".into()))?,
    ))
}

#[derive(Deserialize, Serialize)]
pub(super) struct GrantBody {
    right: String,
    pattern: String,
}

fn checked_grant(body: GrantBody) -> Result<Grant> {
    if Right::parse(&body.right).is_none() {
        let names: Vec<_> = Right::ALL.iter().map(|r| r.as_str()).collect();
        return Err(IdentityError::BadRequest(format!(
            "right: one of {}",
            names.join(", ")
        )));
    }
    let pattern = body.pattern.trim().to_owned();
    let star = pattern.find('*');
    if pattern.is_empty() || pattern.len() > 260 || star.is_some_and(|i| i != pattern.len() - 1) {
        return Err(IdentityError::BadRequest(
            "pattern: a hybrid connection name, optionally ending in '*'".into(),
        ));
    }
    Ok(Grant {
        right: body.right,
        pattern,
    })
}

pub(super) async fn grant(
    State(state): State<Arc<Identity>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(body): Json<GrantBody>,
) -> Result<Json<Person>> {
    change_grant(&state, &headers, name, body, true).await
}

pub(super) async fn revoke(
    State(state): State<Arc<Identity>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(body): Json<GrantBody>,
) -> Result<Json<Person>> {
    change_grant(&state, &headers, name, body, false).await
}

async fn change_grant(
    state: &Arc<Identity>,
    headers: &HeaderMap,
    name: String,
    body: GrantBody,
    add: bool,
) -> Result<Json<Person>> {
    require_manage(state, headers)?;
    let grant = checked_grant(body)?;
    let store = Arc::clone(&state.store);
    let person = blocking(move || {
        let kind = if add {
            AuditKind::PersonGrant
        } else {
            AuditKind::PersonRevoke
        };
        let event = AuditEvent::now(kind, &name, &format!("{} {}", grant.right, grant.pattern));
        let write = if add {
            IdentityWrite::Grant {
                name: &name,
                grant: &grant,
            }
        } else {
            IdentityWrite::RevokeGrant {
                name: &name,
                grant: &grant,
            }
        };
        store.write_audited(write, &[event])?;
        Ok(store.person(&name)?.map(|(p, _)| p))
    })
    .await?;
    Ok(Json(
        person.ok_or_else(|| IdentityError::NotFound("person".into()))?,
    ))
}
