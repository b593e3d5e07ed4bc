"""Exceptions of the domain package. Each says what happened and, where it helps, what to do."""


class DomainError(Exception):
    """Base of every error bot/ raises on purpose."""


class InvalidPhone(DomainError):
    """The text is not a mobile number we can text or call."""


class InvalidName(DomainError):
    """The text does not look like a person's name."""


class UnknownPatient(DomainError):
    """No patient with this id."""


class BookingError(DomainError):
    """Base of the booking rules' refusals."""


class SlotTaken(BookingError):
    """Someone else booked this slot first; offer another."""


class SlotInPast(BookingError):
    """The slot has already started; offer a later one."""


class DuplicateBooking(BookingError):
    """The patient already holds a booking with this department on that day."""

    def __init__(self, existing_appointment_id: int) -> None:
        super().__init__(f"patient already holds appointment {existing_appointment_id} that day in this department")
        self.existing_appointment_id = existing_appointment_id


class AppointmentNotFound(BookingError):
    """No active appointment with this id belongs to this patient."""
